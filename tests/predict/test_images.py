"""Image decoding and MNIST framing (service/serving/images.py): every mode, every bad file."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw

from service.core.errors import ApiError
from service.serving.images import decode_upload, frame_digit, pixels_to_images, to_model_input

LIMIT = 4096 * 4096


def drawing(size: tuple[int, int] = (300, 240), offset: tuple[int, int] = (0, 0)) -> Image.Image:
    """A '7' drawn in black on white paper (mode L), like a user's drawing."""
    img = Image.new("L", size, 255)
    d = ImageDraw.Draw(img)
    ox, oy = offset
    d.line([(90 + ox, 40 + oy), (190 + ox, 40 + oy), (120 + ox, 200 + oy)], fill=0, width=18)
    return img


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def close(a: np.ndarray, b: np.ndarray, mean_abs: float = 6.0) -> bool:
    """Two framed digits agree: small mean difference and high correlation."""
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean()
    corr = np.corrcoef(a.ravel().astype(np.float64), b.ravel().astype(np.float64))[0, 1]
    return diff < mean_abs and corr > 0.97


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return decode_upload(encode(drawing()), max_pixels=LIMIT)


def test_drawing_is_inverted_fitted_and_centred(reference: np.ndarray) -> None:
    assert reference.dtype == np.uint8 and reference.shape == (28, 28)
    assert reference.max() == 255 and reference[0].max() == 0  # light digit, dark border
    rows, cols = np.flatnonzero(reference.any(1)), np.flatnonzero(reference.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20  # fitted into 20 x 20
    m = reference.astype(np.float64)
    cy = (m.sum(1) * np.arange(28)).sum() / m.sum()
    cx = (m.sum(0) * np.arange(28)).sum() / m.sum()
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def _rgba(dark_ink: bool) -> Image.Image:
    ink = drawing().point(lambda v: 255 - v)  # ink mask: 255 where drawn
    color = (0, 0, 0) if dark_ink else (255, 255, 255)
    img = Image.new("RGBA", ink.size, (*color, 0))
    img.putalpha(ink)
    return img


def _palette_with_transparency() -> Image.Image:
    img = drawing().convert("P")
    img.info["transparency"] = 255  # the white paper becomes transparent
    return img


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    return encode(drawing().rotate(90, expand=True), "JPEG", quality=95, exif=exif)


def _sixteen_bit() -> Image.Image:
    wide = np.asarray(drawing(), dtype=np.uint16) * 257  # 0..65535
    return Image.fromarray(wide)


VARIANTS = {
    "png_rgb": lambda: encode(drawing().convert("RGB")),
    "png_1bit": lambda: encode(drawing().convert("1", dither=Image.Dither.NONE)),
    "png_rgba_black_ink_on_transparent": lambda: encode(_rgba(dark_ink=True)),
    "png_rgba_white_ink_on_transparent": lambda: encode(_rgba(dark_ink=False)),
    "png_palette_transparency": lambda: encode(_palette_with_transparency()),
    "png_16bit_gray": lambda: encode(_sixteen_bit()),
    "png_light_on_dark": lambda: encode(drawing().point(lambda v: 255 - v)),
    "jpeg_gray": lambda: encode(drawing(), "JPEG", quality=95),
    "jpeg_rgb": lambda: encode(drawing().convert("RGB"), "JPEG", quality=95),
    "jpeg_cmyk": lambda: encode(drawing().convert("RGB").convert("CMYK"), "JPEG", quality=95),
    "jpeg_exif_rotated": _exif_rotated,
    "gif": lambda: encode(drawing(), "GIF"),
    "bmp": lambda: encode(drawing().convert("RGB"), "BMP"),
    "webp": lambda: encode(drawing().convert("RGB"), "WEBP", lossless=True),
    "big_offcentre_canvas": lambda: encode(drawing((1200, 900), offset=(700, 500))),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_modes_and_formats_decode_to_the_same_digit(name: str, reference: np.ndarray) -> None:
    out = decode_upload(VARIANTS[name](), max_pixels=LIMIT)
    assert close(out, reference), name


def test_16bit_is_scaled_not_clipped() -> None:
    ramp = (np.arange(28 * 28, dtype=np.uint32).reshape(28, 28) * 83).astype(np.uint16)
    out = decode_upload(encode(Image.fromarray(ramp)), max_pixels=LIMIT)
    assert out[0, 0] == 0 and out.max() == round(int(ramp.max()) / 257)


def test_28x28_mnist_style_upload_is_taken_as_is() -> None:
    rng = np.random.default_rng(0)
    digit = np.zeros((28, 28), np.uint8)
    digit[5:23, 8:20] = rng.integers(0, 256, (18, 12))
    assert np.array_equal(decode_upload(encode(Image.fromarray(digit)), max_pixels=LIMIT), digit)
    inverted = encode(Image.fromarray(255 - digit))  # dark on light: inverted back
    assert np.array_equal(decode_upload(inverted, max_pixels=LIMIT), digit)


def test_json_pixels_match_the_equivalent_upload() -> None:
    rng = np.random.default_rng(1)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 6:22] = rng.integers(0, 256, (16, 16))
    one = pixels_to_images(digit.tolist())
    many = pixels_to_images([digit.tolist(), (255 - digit).tolist()])
    assert one.shape == (1, 28, 28) and many.shape == (2, 28, 28)
    assert np.array_equal(one[0], digit) and np.array_equal(many[1], digit)
    x = to_model_input(one)
    assert x.shape == (1, 784) and abs(float(x.min()) - (0 - 0.1307) / 0.3081) < 1e-6


@pytest.mark.parametrize(
    "pixels",
    [[[0] * 28] * 27, [[0] * 27] * 28, [[[0] * 28] * 28, [[0] * 28] * 27], [[300] * 28] * 28, []],
)
def test_bad_json_pixels_are_rejected(pixels: list) -> None:
    with pytest.raises(ApiError) as err:
        pixels_to_images(pixels)
    assert err.value.status == 422 and err.value.code == "invalid_pixels"


def test_blank_image_gives_an_empty_field() -> None:
    assert frame_digit(np.full((50, 50), 255, np.uint8)).max() == 0


# ---------------------------------------------------------------- the bad-file corpus


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, valid-looking PNG whose header declares ``width`` x ``height`` 1-bit pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _corrupt_idat() -> bytes:
    data = bytearray(encode(drawing()))
    start = data.index(b"IDAT") + 40
    data[start : start + 200] = bytes(200)
    return bytes(data)


BAD_FILES = {
    "empty": (lambda: b"", 422, "empty_file"),
    "text_named_png": (lambda: b"definitely not an image\n" * 20, 415, "unsupported_image"),
    "svg": (
        lambda: b'<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0"/></svg>',
        415,
        "unsupported_image",
    ),
    "tiff_not_allowed": (lambda: encode(drawing(), "TIFF"), 415, "unsupported_image"),
    "pdf_magic": (lambda: b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", 415, "unsupported_image"),
    "truncated_png": (lambda: encode(drawing())[:300], 422, "invalid_image"),
    "truncated_jpeg": (lambda: encode(drawing(), "JPEG")[:700], 422, "invalid_image"),
    "corrupt_png_data": (_corrupt_idat, 422, "invalid_image"),
    "png_header_only": (lambda: encode(drawing())[:33], 422, "invalid_image"),
    "bomb_100k_squared": (lambda: png_declaring(100_000, 100_000), 413, "image_too_large"),
    "bomb_over_setting": (lambda: png_declaring(5000, 5000), 413, "image_too_large"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_corpus_decoder(name: str) -> None:
    build, status, code = BAD_FILES[name]
    with pytest.raises(ApiError) as err:
        decode_upload(build(), max_pixels=LIMIT)
    assert (err.value.status, err.value.code) == (status, code), err.value.message
    assert err.value.param == "file"


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_corpus_over_http(name: str, predict_client) -> None:
    build, status, code = BAD_FILES[name]
    files = {"file": ("upload.png", build(), "image/png")}
    r = predict_client.post("/predict", files=files)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_image_over_the_pixel_setting(registered, make_app) -> None:
    from fastapi.testclient import TestClient

    with TestClient(make_app(max_image_pixels=5000)) as c:
        r = c.post("/predict", files={"file": ("d.png", encode(drawing((100, 100))), "image/png")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "image_too_large"
        ok = c.post("/predict", files={"file": ("d.png", encode(drawing((70, 70))), "image/png")})
        assert ok.status_code == 200, ok.text


def test_real_mnist_digits_drawn_on_paper_classify_as_well_as_raw() -> None:
    """MNIST test digits, enlarged 8x, inverted to dark-on-light and pasted anywhere on a
    640 x 480 page, classify as well after framing as the original 28 x 28 digits."""
    import torch
    from torchvision.datasets import MNIST

    from models.data import normalize_images
    from tests.conftest import mnist_dir

    try:
        train, test = MNIST(str(mnist_dir()), train=True), MNIST(str(mnist_dir()), train=False)
    except RuntimeError:
        pytest.skip("MNIST raw files not available")
    torch.manual_seed(0)
    x, y = normalize_images(train.data[:12000]), train.targets[:12000]
    net = torch.nn.Sequential(torch.nn.Linear(784, 64), torch.nn.ReLU(), torch.nn.Linear(64, 10))
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(128):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    n = 200
    rng = np.random.default_rng(0)
    framed = []
    for digit in test.data[:n].numpy():
        big = Image.fromarray(255 - digit).resize((224, 224), Image.Resampling.BILINEAR)
        page = Image.new("L", (640, 480), 255)
        page.paste(big, (int(rng.integers(0, 400)), int(rng.integers(0, 250))))
        framed.append(decode_upload(encode(page), max_pixels=LIMIT))
    with torch.no_grad():
        raw_acc = (net(normalize_images(test.data[:n])).argmax(1) == test.targets[:n]).float()
        framed_x = to_model_input(np.stack(framed))
        framed_acc = (net(framed_x).argmax(1) == test.targets[:n]).float()
    assert raw_acc.mean() > 0.85
    assert framed_acc.mean() >= raw_acc.mean() - 0.03
