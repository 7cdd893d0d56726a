"""Turn untrusted uploads and JSON pixel arrays into MNIST-style model inputs.

Every image ends as what the network was trained on: 8-bit grayscale, 28 x 28, a light
digit on a dark background, then ``models.data.normalize_images`` (mean 0.1307, std 0.3081)
to float32 (N, 784).

Decoding (uploads only): Pillow, restricted to :data:`ALLOWED_FORMATS`; the declared pixel
count is checked against ``max_pixels`` *before* any pixel is decoded (so a decompression
bomb, a tiny file declaring a huge image, costs nothing); the EXIF orientation is applied;
every mode is reduced to 8-bit grayscale (16-bit and 32-bit grayscale are scaled, not
clipped; CMYK, palette and RGB use ITU-R 601 luma; transparent images are composited over
white when their opaque pixels are dark and over black otherwise, so black strokes on a
transparent canvas and white strokes on one both survive).

Framing (what MNIST did to NIST's scans, LeCun et al. 1998):

1. Polarity: when the median of the image's border ring is above 127 the image is
   dark-on-light (a drawing on paper) and is inverted.
2. A 28 x 28 image is taken as already framed (an MNIST sample, or a client that did its
   own preprocessing): nothing else is done to it. JSON ``pixels`` are treated the same way.
3. Any other size: the background level (border median) is subtracted, contrast stretched
   to a peak of 255, faint noise (under 10 % of the peak) dropped, the digit's bounding box
   cropped and resized to fit 20 x 20 with its aspect ratio kept, and the result placed in
   a 28 x 28 field so that its centre of mass lands on pixel (14, 14) -- where the centre of
   mass of MNIST's test digits sits on average (13.99, 14.01).

Errors are :class:`service.core.errors.ApiError` (4xx, never 5xx): ``empty_file`` (422),
``unsupported_image`` (415, not one of the allowed formats, whatever the declared content
type), ``image_too_large`` (413, declared pixel count over the limit, decompression bombs
included), ``invalid_image`` (422, truncated or corrupt data), ``invalid_pixels`` (422).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from io import BytesIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from models.data import normalize_images
from service.core.errors import ApiError

log = logging.getLogger(__name__)

ALLOWED_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
SIDE = 28  # MNIST field (pixels)
BOX = 20  # MNIST digits are fitted into a 20 x 20 box (pixels)
CENTER = 14.0  # target centre of mass, row and column index
NOISE_FLOOR = 0.10  # share of the peak below which stretched pixels count as paper noise

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"\xff\xd8\xff", "JPEG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)


def decode_upload(data: bytes, *, max_pixels: int, param: str = "file") -> np.ndarray:
    """Decode one uploaded file into a framed MNIST digit.

    Args:
        data: the file's bytes, as uploaded.
        max_pixels: largest accepted width x height (pixels), checked before decoding.
        param: request field named in error envelopes.

    Returns:
        uint8 array (28, 28): light digit on a dark background.

    Raises:
        ApiError: 422 ``empty_file``, 415 ``unsupported_image``, 413 ``image_too_large``,
            422 ``invalid_image``.
    """
    if not data:
        raise ApiError(422, "empty_file", "The uploaded file is empty.", param)
    img = _open_checked(data, max_pixels, param)
    return frame_digit(to_grayscale(img))


def _open_checked(data: bytes, max_pixels: int, param: str) -> Image.Image:
    """Open ``data`` with an allowed format, check its size, then decode the pixels."""
    allowed = ", ".join(ALLOWED_FORMATS)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        sniffed = _sniff(data)
        if sniffed is not None:  # right magic bytes, but Pillow could not parse the header
            raise ApiError(
                422, "invalid_image", f"The file starts like a {sniffed} but is corrupt.", param
            ) from None
        raise ApiError(
            415,
            "unsupported_image",
            f"The file is not an image in an accepted format ({allowed}).",
            param,
        ) from None
    except Image.DecompressionBombError as exc:
        raise ApiError(413, "image_too_large", f"Image rejected: {exc}", param) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise ApiError(422, "invalid_image", f"The image header is corrupt: {exc}", param) from None
    width, height = img.size
    if width < 1 or height < 1:
        raise ApiError(422, "invalid_image", "The image has no pixels.", param)
    if width * height > max_pixels:
        raise ApiError(
            413,
            "image_too_large",
            f"The image is {width} x {height} = {width * height} pixels; the limit is "
            f"{max_pixels} pixels.",
            param,
        )
    try:
        img.load()
        img = ImageOps.exif_transpose(img)
    except Exception as exc:  # truncated data, bad EXIF, decoder errors
        raise ApiError(
            422, "invalid_image", f"The {img.format} image could not be decoded: {exc}", param
        ) from None
    return img


def _sniff(data: bytes) -> str | None:
    """The allowed format whose magic bytes ``data`` starts with, if any."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def to_grayscale(img: Image.Image) -> np.ndarray:
    """Reduce a decoded image of any mode to 8-bit grayscale.

    Args:
        img: a loaded Pillow image.

    Returns:
        uint8 array (H, W).
    """
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES:
        wide = np.asarray(img).astype(np.float32)
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    if mode == "F":
        return np.clip(np.rint(np.asarray(img, dtype=np.float32)), 0, 255).astype(np.uint8)
    if mode in _ALPHA_MODES or "transparency" in img.info:
        return _flatten_alpha(img.convert("RGBA"))
    try:
        return np.asarray(img.convert("L"), dtype=np.uint8)
    except ValueError:  # modes without a direct conversion to L
        return np.asarray(img.convert("RGB").convert("L"), dtype=np.uint8)


def _flatten_alpha(rgba: Image.Image) -> np.ndarray:
    """Composite an RGBA image over white if its opaque pixels are dark, else over black."""
    luma = np.asarray(rgba.convert("RGB").convert("L"), dtype=np.float32)
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
    opaque = alpha >= 0.5
    ink_is_dark = bool(opaque.any()) and float(luma[opaque].mean()) < 128.0
    background = 255.0 if ink_is_dark else 0.0
    out = luma * alpha + background * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


_RING_28 = np.flatnonzero(np.pad(np.zeros((SIDE - 2, SIDE - 2), bool), 1, constant_values=True))


def _border(x: np.ndarray) -> np.ndarray:
    """The pixels of the outer ring of ``x`` (H, W), ring width ~2 % of the short side."""
    if x.shape == (SIDE, SIDE):
        return x.reshape(-1)[_RING_28]
    k = max(1, round(0.02 * min(x.shape)))
    return np.concatenate([x[:k].ravel(), x[-k:].ravel(), x[:, :k].ravel(), x[:, -k:].ravel()])


def frame_digit(gray: np.ndarray) -> np.ndarray:
    """Frame a grayscale image MNIST-style (see the module docstring for the steps).

    Args:
        gray: uint8 (H, W), any size of at least one pixel.

    Returns:
        uint8 (28, 28): light digit on dark background; all zeros for a blank image.
    """
    border = _border(gray)
    if 2 * np.count_nonzero(border > 127) > border.size:  # the border's median is > 127
        gray = 255 - gray
        border = 255 - border
    if gray.shape == (SIDE, SIDE):
        return np.ascontiguousarray(gray)
    x = np.clip(gray.astype(np.float32) - float(np.median(border)), 0.0, None)
    peak = float(x.max())
    if peak <= 0.0:
        return np.zeros((SIDE, SIDE), np.uint8)
    x *= 255.0 / peak
    x[x < NOISE_FLOOR * 255.0] = 0.0
    rows = np.flatnonzero(x.any(axis=1))
    cols = np.flatnonzero(x.any(axis=0))
    crop = x[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    return _center_by_mass(_fit_box(crop))


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Resize ``crop`` (h, w) float so its longer side is 20 pixels; peak restored to 255."""
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # Pillow: (width, height)
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    small = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample), dtype=np.float32)
    small = np.clip(small, 0.0, None)
    peak = float(small.max())
    return small * (255.0 / peak) if peak > 0 else small


def _center_by_mass(patch: np.ndarray) -> np.ndarray:
    """Place ``patch`` (h <= 20, w <= 20) in a 28 x 28 field, centre of mass at (14, 14)."""
    h, w = patch.shape
    mass = float(patch.sum())
    cy = float((patch.sum(axis=1) * np.arange(h)).sum() / mass) if mass else (h - 1) / 2
    cx = float((patch.sum(axis=0) * np.arange(w)).sum() / mass) if mass else (w - 1) / 2
    top = min(max(round(CENTER - cy), 0), SIDE - h)
    left = min(max(round(CENTER - cx), 0), SIDE - w)
    field = np.zeros((SIDE, SIDE), np.float32)
    field[top : top + h, left : left + w] = patch
    return np.clip(np.rint(field), 0, 255).astype(np.uint8)


def pixels_to_images(pixels: Sequence, param: str = "pixels") -> np.ndarray:
    """Turn JSON ``pixels`` (one 28 x 28 array or a list of them, values 0..255) into digits.

    Values are rounded to integers. A dark-on-light array is inverted (border rule above);
    nothing else is changed: 28 x 28 arrays are taken as already framed.

    Args:
        pixels: nested lists of shape (28, 28) or (N, 28, 28), numbers in [0, 255].
        param: request field named in error envelopes.

    Returns:
        uint8 (N, 28, 28).

    Raises:
        ApiError: 422 ``invalid_pixels`` for a wrong shape or out-of-range values.
    """
    try:
        arr = np.asarray(pixels, dtype=np.float32)
    except (ValueError, TypeError):
        raise ApiError(
            422, "invalid_pixels", "pixels must be a 28 x 28 array of numbers (or a list).", param
        ) from None
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (SIDE, SIDE) or arr.shape[0] < 1:
        raise ApiError(
            422,
            "invalid_pixels",
            f"pixels must have shape (28, 28) or (N, 28, 28), got {tuple(arr.shape)}.",
            param,
        )
    if not (arr.min() >= 0 and arr.max() <= 255):  # False for NaN too
        raise ApiError(422, "invalid_pixels", "pixel values must be numbers in [0, 255].", param)
    images = np.rint(arr).astype(np.uint8)
    for i in range(images.shape[0]):  # 28 x 28: only the polarity rule applies
        images[i] = frame_digit(images[i])
    return images


def raw_to_images(data: bytes, param: str = "body") -> np.ndarray:
    """Turn a binary body (``application/octet-stream``) of N x 784 uint8 values, each
    image 28 rows of 28 pixels in row-major order, into digits (polarity rule as for JSON).

    Returns:
        uint8 (N, 28, 28), a copy (the body's buffer is read-only).

    Raises:
        ApiError: 422 ``invalid_pixels`` when the length is not a positive multiple of 784.
    """
    n, rest = divmod(len(data), SIDE * SIDE)
    if n < 1 or rest:
        raise ApiError(
            422,
            "invalid_pixels",
            f"an application/octet-stream body is N x 784 bytes (28 x 28 uint8 pixels per "
            f"image, row-major); got {len(data)} bytes.",
            param,
        )
    images = np.frombuffer(data, dtype=np.uint8).reshape(n, SIDE, SIDE).copy()
    for i in range(n):
        images[i] = frame_digit(images[i])
    return images


def to_model_input(images: np.ndarray) -> torch.Tensor:
    """Normalise framed digits for the network.

    Args:
        images: uint8 (N, 28, 28).

    Returns:
        float32 (N, 784): ``(pixel / 255 - 0.1307) / 0.3081`` (``models.data.normalize_images``).
    """
    flat = np.ascontiguousarray(images, dtype=np.uint8).reshape(images.shape[0], SIDE * SIDE)
    return torch.from_numpy(_NORMALIZED[flat])


# normalize_images applied to every possible pixel value once: a lookup table is exact (the
# same float32 operations per value) and costs ~5 us per image instead of ~60 us.
_NORMALIZED: np.ndarray = (
    normalize_images(torch.arange(256, dtype=torch.uint8).reshape(1, 16, 16)).numpy().reshape(256)
)
