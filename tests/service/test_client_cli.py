"""The public client and the ``lora-service jobs | adapters | predict`` commands against a
live stack: ``lora-service api`` and ``lora-service worker`` processes on SQLite, with an
API key (tests/e2e/e2e_stack.py), training small real MNIST jobs.

The commands run as the installed ``lora-service`` script in a child process, as a user
runs them; their ``--json`` output is compared with what the API itself answers.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from e2e_stack import (  # noqa: E402
    API_KEY,
    SMALL_NET,
    Stack,
    embedded_backend,
    free_port,
    mnist_dir,
    run_command,
    running_stack,
)

from service.client import Client, ServiceError  # noqa: E402

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
SEVEN, TWO = EXAMPLES / "seven.png", EXAMPLES / "two_on_white.png"
SMALL_PRETRAIN = {"epochs": 2, "max_train_samples": 2000, "keep_checkpoints": 2, **SMALL_NET}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not (mnist_dir() / "MNIST" / "raw" / "train-images-idx3-ubyte").exists():
        pytest.skip(f"MNIST raw files not found under {mnist_dir()}")
    root = tmp_path_factory.mktemp("client_cli")
    with running_stack(embedded_backend(root, mnist_dir()), root) as stack:
        yield stack


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[Client]:
    with Client(stack.url, api_key=API_KEY, timeout=30) as c:
        yield c


def cli(stack: Stack, *args: str, key: str = API_KEY, timeout: float = 120):  # noqa: ANN201
    """``lora-service ARGS`` with API_URL and API_KEY pointing at the stack."""
    env = {"API_URL": stack.url, "API_KEY": key}
    return run_command(["lora-service", *args], env, stack.root, timeout=timeout)


def ok_json(result: subprocess.CompletedProcess) -> Any:
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return json.loads(result.stdout)


def set_args(config: dict[str, Any]) -> list[str]:
    return [a for k, v in config.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def wait_status(client: Client, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while (job := client.jobs.get(job_id))["status"] not in statuses:
        assert time.monotonic() < deadline, job
        time.sleep(0.05)
    return job


@pytest.fixture(scope="module")
def pretrain(stack: Stack, client: Client) -> dict[str, Any]:
    """A small pre-training job submitted with ``jobs submit``, then followed to its end."""
    args = ["jobs", "submit", "pretrain", *set_args(SMALL_PRETRAIN), "--json"]
    job = ok_json(cli(stack, *args, "--idempotency-key", "cli-pretrain-1"))
    again = ok_json(cli(stack, *args, "--idempotency-key", "cli-pretrain-1"))
    assert job["status"] == "queued" and job["kind"] == "pretrain"
    assert {k: job["config"][k] for k in SMALL_PRETRAIN} == SMALL_PRETRAIN
    assert again["id"] == job["id"]  # the same key returned the job it created
    return {"submitted": job, "watch": cli(stack, "jobs", "watch", job["id"])}


def test_watch_follows_the_stream_to_succeeded(stack: Stack, pretrain: dict) -> None:
    watch = pretrain["watch"]
    assert watch.returncode == 0, watch.stdout[-3000:] + watch.stderr[-3000:] + stack.logs()
    job_id = pretrain["submitted"]["id"]
    assert f"job {job_id} succeeded" in watch.stdout
    assert "metrics" in watch.stdout and "epoch 2/2" in watch.stdout  # event lines, the bar

    events = [
        json.loads(line)
        for line in cli(stack, "jobs", "watch", job_id, "--json").stdout.splitlines()
    ]
    ids = [e["id"] for e in events]
    assert ids == sorted(set(ids)) and ids[0] == 1  # every event once, in order
    assert (events[0]["type"], events[0]["data"]["status"]) == ("status", "queued")
    assert (events[-1]["type"], events[-1]["data"]["status"]) == ("status", "succeeded")
    assert sum(e["type"] == "metrics" for e in events) == SMALL_PRETRAIN["epochs"]
    # Resuming after an event gives exactly the rest: no gap, no repeat.
    tail = cli(stack, "jobs", "watch", job_id, "--json", "--after", str(ids[1]))
    assert tail.returncode == 0
    assert [json.loads(line) for line in tail.stdout.splitlines()] == events[2:]


def test_show_and_list(stack: Stack, pretrain: dict) -> None:
    job_id = pretrain["submitted"]["id"]
    job = ok_json(cli(stack, "jobs", "show", job_id, "--json"))
    assert job["status"] == "succeeded" and job["result"]["model_id"]
    with stack.client() as http:
        assert job == http.get(f"/jobs/{job_id}").json()
    shown = cli(stack, "jobs", "show", job_id)
    assert shown.returncode == 0 and "metrics per epoch" in shown.stdout
    assert "val_loss" in shown.stdout and job["result"]["model_id"] in shown.stdout

    page = ok_json(cli(stack, "jobs", "list", "--kind", "pretrain", "--json"))
    assert job_id in [j["id"] for j in page["items"]]
    empty = ok_json(
        cli(stack, "jobs", "list", "--kind", "finetune_full", "--status", "running", "--json")
    )
    assert empty["items"] == [] and empty["total"] == 0
    table = cli(stack, "jobs", "list", "--limit", "1")
    assert table.returncode == 0 and job_id in table.stdout and "succeeded" in table.stdout


def test_predict_files(stack: Stack, pretrain: dict) -> None:
    model_id = ok_json(cli(stack, "jobs", "show", pretrain["submitted"]["id"], "--json"))["result"][
        "model_id"
    ]
    rows = ok_json(cli(stack, "predict", str(SEVEN), str(TWO), "--model", model_id, "--json"))
    assert [r["file"] for r in rows] == [str(SEVEN), str(TWO)]
    with stack.client() as http:
        files = [("file", (p.name, p.read_bytes())) for p in (SEVEN, TWO)]
        direct = http.post("/predict", files=files, data={"model_id": model_id}).json()
    assert [{k: v for k, v in r.items() if k != "file"} for r in rows] == direct["predictions"]
    assert set(rows[0]["probabilities"]) == {"0", "1", "2", "3", "4"}
    table = cli(stack, "predict", str(TWO), "--model", model_id)
    assert (
        table.returncode == 0 and str(rows[1]["digit"]) in table.stdout and model_id in table.stdout
    )


def test_lora_adapter_list_download_import_delete(
    stack: Stack, client: Client, pretrain: dict, tmp_path: Path
) -> None:
    model_id = client.jobs.get(pretrain["submitted"]["id"])["result"]["model_id"]
    config = {"r": 2, "epochs": 1, "max_train_samples": 1000}
    args = ["jobs", "submit", "finetune_lora", "--base-model", model_id, *set_args(config)]
    run = cli(stack, *args, "--watch", "--json")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:] + stack.logs()
    last = json.loads(run.stdout.splitlines()[-1])
    assert last["type"] == "status" and last["data"]["status"] == "succeeded"
    adapter_id = client.jobs.get(last["job_id"])["result"]["adapter_id"]

    listed = ok_json(cli(stack, "adapters", "list", "--base-model", model_id, "--json"))
    assert [a["id"] for a in listed["items"]] == [adapter_id] and listed["items"][0]["r"] == 2
    assert adapter_id in cli(stack, "adapters", "list").stdout

    out = f"{tmp_path}/new/"  # a directory, made
    saved = ok_json(cli(stack, "adapters", "download", adapter_id, "-o", out, "--json"))
    archive = tmp_path / "new" / f"{adapter_id}.zip"
    assert saved["path"] == str(archive) and saved["bytes"] == archive.stat().st_size
    with zipfile.ZipFile(archive) as zf:
        assert sorted(zf.namelist()) == ["adapter_config.json", "adapter_model.safetensors"]

    imported = ok_json(
        cli(stack, "adapters", "import", str(archive), "--base-model", model_id, "--classes",
            "5,6,7,8,9", "--json")
    )  # fmt: skip
    assert imported["id"] != adapter_id and imported["source"] == "imported"
    assert (imported["r"], imported["classes"]) == (2, [5, 6, 7, 8, 9])
    # The same weights serve the same answer.
    answers = [
        ok_json(cli(stack, "predict", str(SEVEN), "--model", model_id, "--adapter", a, "--json"))[0]
        for a in (adapter_id, imported["id"])
    ]
    assert set(answers[0]["probabilities"]) == {"5", "6", "7", "8", "9"}
    assert answers[0]["digit"] == answers[1]["digit"]
    for digit, p in answers[0]["probabilities"].items():
        assert answers[1]["probabilities"][digit] == pytest.approx(p, abs=1e-6)

    gone = cli(stack, "adapters", "delete", imported["id"])
    assert gone.returncode == 0 and f"adapter {imported['id']} deleted" in gone.stdout
    after = ok_json(cli(stack, "adapters", "list", "--json"))
    assert imported["id"] not in [a["id"] for a in after["items"]]
    again = cli(stack, "adapters", "delete", imported["id"])
    assert again.returncode == 1
    assert f"adapter_not_found: No adapter with id {imported['id']!r}." in again.stderr


def test_cancel_queued_and_running_jobs_and_watch_exit_code(stack: Stack, client: Client) -> None:
    long = {"epochs": 200, **SMALL_NET}
    first = ok_json(cli(stack, "jobs", "submit", "pretrain", *set_args(long), "--json"))
    wait_status(client, first["id"], {"running"})
    second = cli(stack, "jobs", "submit", "pretrain", *set_args(long), "-q")
    second_id = second.stdout.strip()
    assert second.returncode == 0 and second_id.startswith("job_")

    queued = ok_json(cli(stack, "jobs", "cancel", second_id, "--json"))
    assert queued["status"] == "cancelled"  # it was queued behind the first: at once
    running = cli(stack, "jobs", "cancel", first["id"])
    assert running.returncode == 0 and "cancel requested" in running.stdout
    for job_id in (first["id"], second_id):
        watch = cli(stack, "jobs", "watch", job_id)
        assert watch.returncode == 4, watch.stdout[-2000:] + watch.stderr[-2000:]
        assert f"job {job_id} cancelled" in watch.stdout
    again = ok_json(cli(stack, "jobs", "cancel", second_id, "--json"))  # a no-op
    assert again["status"] == "cancelled"


def test_failed_job_exits_3(stack: Stack, client: Client, pretrain: dict) -> None:
    """A fine-tune whose base model's files are missing fails; ``--watch`` exits 3."""
    model_id = client.jobs.get(pretrain["submitted"]["id"])["result"]["model_id"]
    files = Path(stack.backend.env["ARTIFACT_DIR"]) / "models" / model_id
    hidden = files.with_name(f"{model_id}.hidden")
    files.rename(hidden)
    try:
        run = cli(stack, "jobs", "submit", "finetune_full", "--base-model", model_id,
                  "--set", "epochs=1", "--watch")  # fmt: skip
    finally:
        hidden.rename(files)
    assert run.returncode == 3, run.stdout[-2000:] + run.stderr[-2000:]
    assert "base_model_unreadable" in run.stdout and "failed" in run.stdout


def test_errors_exit_1_with_the_api_message(stack: Stack, pretrain: dict) -> None:
    unknown = cli(stack, "jobs", "show", "job_nope")
    assert unknown.returncode == 1 and unknown.stdout == ""
    assert unknown.stderr == "lora-service: job_not_found: No job with id 'job_nope'. [HTTP 404]\n"
    done = pretrain["submitted"]["id"]
    finished = cli(stack, "jobs", "cancel", done)
    assert finished.returncode == 1
    assert f"job_finished: Job {done} already succeeded. [HTTP 409]" in finished.stderr
    as_json = cli(stack, "jobs", "watch", "job_nope", "--json")
    envelope = json.loads(as_json.stderr)["error"]
    assert as_json.returncode == 1 and (envelope["code"], envelope["status"]) == (
        "job_not_found",
        404,
    )

    invalid = cli(stack, "jobs", "submit", "pretrain", "--set", "epochs=0")
    assert invalid.returncode == 1
    assert "validation_error" in invalid.stderr and "(param: config.epochs)" in invalid.stderr
    unknown_field = cli(stack, "jobs", "submit", "pretrain", "--set", "epochz=3")
    assert unknown_field.returncode == 1 and "epochz" in unknown_field.stderr

    no_key = cli(stack, "jobs", "list", key="")
    assert no_key.returncode == 1 and "unauthorized: Missing API key" in no_key.stderr
    wrong_key = cli(stack, "adapters", "list", key="wrong")
    assert wrong_key.returncode == 1 and "Invalid API key" in wrong_key.stderr

    down = cli(stack, "predict", str(SEVEN), "--api-url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and "unreachable: cannot reach the service" in down.stderr
    usage = cli(stack, "jobs", "submit", "pretrain", "--set", "epochs")
    assert usage.returncode == 2 and "expected field=value" in usage.stderr
    missing = cli(stack, "predict", "no-such.png")
    assert missing.returncode == 2 and "no-such.png" in missing.stderr


def test_client_events_pages_stream_and_errors(client: Client, pretrain: dict) -> None:
    job_id = pretrain["submitted"]["id"]
    pages, after = [], None
    while True:
        page = client.jobs.events(job_id, after=after, limit=2)
        pages.append(page)
        assert len(page["items"]) <= 2
        if not page["has_more"]:
            break
        after = page["next_after"]
        assert after == page["items"][-1]["id"]
    paged = [e for p in pages for e in p["items"]]
    assert len(pages) > 1 and paged == list(client.jobs.stream_events(job_id))
    assert list(client.jobs.stream_events(job_id, after=paged[-1]["id"])) == []  # over: ends

    with pytest.raises(ServiceError) as info:
        list(client.jobs.stream_events("job_nope"))
    assert (info.value.status, info.value.code) == (404, "job_not_found")
    assert info.value.message == "No job with id 'job_nope'."


def test_client_checkpoints_publish_and_predict(client: Client, pretrain: dict) -> None:
    job_id = pretrain["submitted"]["id"]
    job = client.jobs.get(job_id)
    checkpoints = client.jobs.checkpoints(job_id)
    assert [c["epoch"] for c in checkpoints] == [1, 2]
    assert [c["selected"] for c in checkpoints] == [
        c["epoch"] == job["result"]["selected_epoch"] for c in checkpoints
    ]
    other = next(c["epoch"] for c in checkpoints if not c["selected"])
    model = client.jobs.publish_checkpoint(job_id, other)
    assert model["id"] != job["result"]["model_id"] and model["kind"] == "pretrain"
    [answer] = client.predict([SEVEN], model_id=model["id"])
    assert answer["model_id"] == model["id"] and answer["digit"] in range(5)
    with pytest.raises(ServiceError) as info:
        client.predict(pixels=[[0] * 28] * 27, model_id=model["id"])
    assert (info.value.status, info.value.param) == (422, "pixels")


def test_client_unreachable_and_health(client: Client) -> None:
    assert client.health() == {
        "status": "ok",
        "database": "ok",
        "broker": "ok",
        "artifact_store": "ok",
    }
    with Client(f"http://127.0.0.1:{free_port()}", api_key="") as down:
        with pytest.raises(ServiceError) as info:
            down.jobs.list()
    assert info.value.code == "unreachable" and info.value.status is None


def test_stream_resumes_across_an_api_restart(stack: Stack, client: Client) -> None:
    """The API stops and starts again while a job is followed: the stream reconnects with
    Last-Event-ID and every event arrives once, in order."""
    job = client.jobs.submit("pretrain", {"epochs": 200, "max_train_samples": 1000, **SMALL_NET})
    seen: list[dict] = []
    errors: list[BaseException] = []

    def collect() -> None:
        try:
            for event in client.jobs.stream_events(job["id"]):
                seen.append(event)
        except BaseException as exc:  # noqa: BLE001 (reported by the main thread)
            errors.append(exc)

    thread = threading.Thread(target=collect, daemon=True)
    thread.start()

    def metrics_seen() -> int:
        return sum(e["type"] == "metrics" for e in seen)

    def wait_for(n: int) -> None:
        deadline = time.monotonic() + 60
        while metrics_seen() < n:
            assert time.monotonic() < deadline and not errors, (seen, errors)
            time.sleep(0.05)

    wait_for(1)
    assert stack.api is not None
    stack.api.stop()
    before = len(seen)
    stack.start_api()
    wait_for(metrics_seen() + 1)  # a new epoch, streamed by the new API process
    client.jobs.cancel(job["id"])
    thread.join(60)
    assert not thread.is_alive() and not errors, errors
    assert [e["id"] for e in seen] == list(range(1, len(seen) + 1))  # no gap, no repeat
    assert len(seen) > before
    assert (seen[-1]["type"], seen[-1]["data"]["status"]) == ("status", "cancelled")


def test_submit_config_from_json_and_set() -> None:
    from service.client.job_commands import build_config

    sets = ["lr=1e-4", "classes=5,6,7", "target_modules=fc1,fc2", "lr_schedule=cosine",
            "early_stopping.patience=3", "use_rslora=true", "max_train_samples=null"]  # fmt: skip
    assert build_config('{"epochs": 2, "r": 4}', sets) == {
        "epochs": 2, "r": 4, "lr": 1e-4, "classes": [5, 6, 7], "target_modules": ["fc1", "fc2"],
        "lr_schedule": "cosine", "early_stopping": {"patience": 3}, "use_rslora": True,
        "max_train_samples": None,
    }  # fmt: skip
