"""Workers killed mid-job on Postgres + Redis: real ``lora-service api`` and
``lora-service worker`` processes, real MNIST, a 784-32-32-5 MLP, leases of a few seconds
(:data:`robust_helpers.LEASE_ENV`).

The tests share one stack and hand live workers on to the next test (worker start-up costs
~10 s on a busy host), so they run in file order and never assume which worker takes a job:
the job row's lease (``worker_id`` = host:pid) says.
"""

from __future__ import annotations

import pytest
from e2e_stack import Stack, submit, watch
from pause_in_write import install_hook
from robust_helpers import (
    SLOW_EPOCHS,
    TALLY,
    alive,
    checkpoint_epoch,
    ensure_workers,
    env_path,
    epochs_done,
    freeze,
    job_row,
    kill,
    launch_workers,
    metric_rows,
    register_base,
    running_on,
    settings_of,
    start_workers,
    wait_for,
    wait_ready,
)

from service.core.artifacts import TRAINING_STATE_FILE as CHECKPOINT
from service.core.vocab import derived_id
from service.jobs.queue import enqueue_job

pytestmark = pytest.mark.e2e

EPOCH_NAMES = {"train_loss", "val_loss", "val_accuracy", "epoch_seconds", "samples_per_second"}


def _checkpoint(stack: Stack, job_id: str):  # noqa: ANN202 (a Path)
    return stack.root.resolve() / "artifacts" / "checkpoints" / job_id / CHECKPOINT


def _final(stack: Stack, job_id: str, timeout: float = 120) -> dict:
    with stack.client() as http:
        final, _ = watch(http, job_id, timeout=timeout)
    TALLY.check(stack.workers, job_id, final["status"])
    return final


def _not_queued_seen(stack: Stack, job_id: str) -> bool:
    return any(f"job {job_id} is not queued" in p.output() for p in stack.workers)


def test_killed_during_checkpoint_write_keeps_previous_checkpoint(redis_stack: Stack) -> None:
    """A worker whose epoch-3 checkpoint write stops half-way (test hook, see
    :mod:`pause_in_write`) is killed there: the epoch-2 checkpoint is intact, and the next
    worker resumes from it."""
    stack = redis_stack
    paused = stack.root / "paused-in-write"
    hook_dir = install_hook(stack.root / "hook", pause_marker=paused, pause_at_write=3)
    (victim,) = start_workers(stack, 1, PYTHONPATH=env_path(hook_dir))
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": 4, **SLOW_EPOCHS}})["id"]
    running_on(stack, job_id, attempt=1)
    launch_workers(stack, 2)  # they start while the victim trains epochs 1-3
    wait_for(paused.exists, 120, f"the hook to pause in the epoch-3 write\n{stack.logs()}")
    ckpt = _checkpoint(stack, job_id)
    (partial,) = ckpt.parent.glob(f".{CHECKPOINT}.tmp-*")
    assert 0 < partial.stat().st_size < ckpt.stat().st_size
    kill(victim)
    TALLY.kills += 1
    assert checkpoint_epoch(ckpt) == 2  # the previous checkpoint is intact

    final = _final(stack, job_id)
    assert final["status"] == "succeeded" and final["attempt"] == 2, (final, stack.logs())
    done = epochs_done(stack.workers, job_id)
    assert done.pop(victim.name) == [1, 2] and list(done.values()) == [[3, 4]], done
    assert any(
        f"job {job_id} resumes after epoch 2 (attempt 2)" in p.output() for p in stack.workers
    )


def test_cancelled_job_stays_cancelled_across_kills_and_restarts(redis_stack: Stack) -> None:
    """Cancel a running job whose worker is frozen, kill it: the job ends ``cancelled`` (not
    requeued). Redelivered messages, a queued-then-cancelled job and a restart of every
    worker change nothing."""
    stack = redis_stack
    ensure_workers(stack, 2)
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": 50, **SLOW_EPOCHS}})["id"]
    _, victim = running_on(stack, job_id, attempt=1)
    wait_for(lambda: job_row(stack, job_id).epoch >= 1, 120, "epoch 1", 0.02)
    freeze(victim)
    with stack.client() as http:
        resp = http.post(f"/jobs/{job_id}/cancel")
    assert resp.status_code == 202 and resp.json()["cancel_requested"] is True
    kill(victim)
    TALLY.kills += 1
    wait_for(lambda: job_row(stack, job_id).status == "cancelled", 30, "the reaper to cancel")
    settings = settings_of(stack)
    enqueue_job(job_id, settings)  # as if the broker redelivered the message
    wait_for(lambda: _not_queued_seen(stack, job_id), 30, "the redelivery to be a no-op")

    for proc in alive(stack.workers):  # restart every worker ...
        kill(proc)
        TALLY.idle_kills += 1
    with stack.client() as http:  # ... with a queued job cancelled while none runs
        queued_id = submit(http, {"kind": "pretrain", "config": {"epochs": 1, **SLOW_EPOCHS}})["id"]
        assert http.post(f"/jobs/{queued_id}/cancel").json()["status"] == "cancelled"
    wait_ready(launch_workers(stack, 2))
    wait_for(lambda: _not_queued_seen(stack, queued_id), 30, "the queued job's message")
    for jid in (job_id, queued_id):
        row = job_row(stack, jid)
        assert row.status == "cancelled" and row.result_model_id is None, row
        TALLY.check(stack.workers, jid, row.status)
    assert job_row(stack, job_id).attempt == 1
    assert job_row(stack, queued_id).attempt == 0
    assert not _checkpoint(stack, job_id).parent.exists()  # removed by the reaper


def test_killed_in_epoch_3_resumes_from_epoch_2(redis_stack: Stack) -> None:
    stack = redis_stack
    ensure_workers(stack, 2)
    epochs = 4
    with stack.client() as http:
        job_id = submit(http, {"kind": "pretrain", "config": {"epochs": epochs, **SLOW_EPOCHS}})[
            "id"
        ]
    _, victim = running_on(stack, job_id, attempt=1)
    wait_for(lambda: job_row(stack, job_id).epoch >= 2, 120, "epoch 2 recorded", 0.01)
    freeze(victim)  # now inside epoch 3: stop it dead before looking
    assert job_row(stack, job_id).epoch == 2, "epoch 3 finished before the freeze"
    ckpt = _checkpoint(stack, job_id)
    assert checkpoint_epoch(ckpt) == 2
    before = metric_rows(stack, job_id)
    assert {e for e, _, _ in before} == {1, 2}
    kill(victim)
    TALLY.kills += 1

    _, resumer = running_on(stack, job_id, attempt=2)
    final = _final(stack, job_id)
    assert final["status"] == "succeeded", (final, stack.logs())
    assert final["attempt"] == 2 and final["progress"]["epoch"] == epochs
    done = epochs_done(stack.workers, job_id)
    assert done == {victim.name: [1, 2], resumer.name: [3, 4]}, done
    assert f"job {job_id} resumes after epoch 2 (attempt 2)" in resumer.output()

    after = metric_rows(stack, job_id)
    assert [r for r in after if r[0] <= 2] == before  # epochs 1-2: the first run's values
    assert sorted((e, n) for e, n, _ in after) == sorted(
        (e, n) for e in range(1, epochs + 1) for n in EPOCH_NAMES
    )  # exactly one row per epoch and name
    assert not ckpt.exists()  # the resumable state is removed after success
    model = stack.root / "artifacts" / "models" / derived_id("mdl", job_id)
    assert (model / "model.safetensors").exists()
    events = _events(stack, job_id)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses[:2] == ["queued", "running"] and statuses[-2:] == ["running", "succeeded"]
    assert set(statuses[2:-2]) <= {"requeued"}, statuses  # reaped, or taken over directly
    _assert_one_event_per_fact(events, epochs, attempts=[1, 2])


def _redis_restores_unacked(stack: Stack, visibility_timeout: float) -> None:
    """What kombu's Redis transport does in every worker at start-up and then periodically
    (``QoS.restore_visible``): put every message unacknowledged for longer than the
    visibility timeout back in its queue. Run here with a short timeout instead of waiting
    for a worker's next sweep (every 100 s by default)."""
    from kombu import Connection

    options = {"visibility_timeout": visibility_timeout}
    with Connection(settings_of(stack).broker_url, transport_options=options) as conn:
        conn.default_channel.qos.restore_visible(num=1000)


def test_visibility_timeout_shorter_than_job_trains_once(redis_stack: Stack) -> None:
    """Redis redelivers the unacknowledged message of a running job to another worker
    (celery/celery#5935); the lease turns that delivery into a no-op: one run, one set of
    checkpoints, one adapter."""
    stack = redis_stack
    ensure_workers(stack, 2)
    base_id = register_base(stack)
    epochs = 8
    config = {"epochs": epochs, "r": 4, "lora_alpha": 8, "max_train_samples": 6000, "batch_size": 8}
    with stack.client() as http:
        body = {"kind": "finetune_lora", "base_model_id": base_id, "config": config}
        job_id = submit(http, body)["id"]
    _, runner = running_on(stack, job_id, attempt=1)
    wait_for(lambda: job_row(stack, job_id).epoch >= 1, 120, "epoch 1", 0.02)
    _redis_restores_unacked(stack, visibility_timeout=0.2)  # the message is older than that
    wait_for(lambda: _not_queued_seen(stack, job_id), 30, f"the redelivery\n{stack.logs()}")
    assert job_row(stack, job_id).status == "running"  # redelivered while it still trains

    final = _final(stack, job_id)
    assert final["status"] == "succeeded" and final["attempt"] == 1, (final, stack.logs())
    assert epochs_done(stack.workers, job_id) == {runner.name: list(range(1, epochs + 1))}
    runs = [p.name for p in stack.workers if f"job {job_id} (finetune_lora) running" in p.output()]
    assert runs == [runner.name]
    adapters = stack.root / "artifacts" / "adapters"
    assert [p.name for p in adapters.iterdir()] == [derived_id("adp", job_id)]
    events = _events(stack, job_id)
    statuses = [e["data"]["status"] for e in events if e["type"] == "status"]
    assert statuses == ["queued", "running", "succeeded"]  # the redelivery added nothing
    _assert_one_event_per_fact(events, epochs, attempts=[1])
    assert not _checkpoint(stack, job_id).exists()  # the resumable state; kept epochs stay
    with stack.client() as http:
        listed = http.get("/adapters", params={"base_model_id": base_id}).json()
    assert [a["id"] for a in listed["items"]] == [final["result"]["adapter_id"]]


def _events(stack: Stack, job_id: str) -> list[dict]:
    with stack.client() as http:
        page = http.get(f"/jobs/{job_id}/events", params={"limit": 1000}).json()
    assert not page["has_more"]
    return page["items"]


def _assert_one_event_per_fact(events: list[dict], epochs: int, attempts: list[int]) -> None:
    """Event ids 1..n in order; one metrics event per epoch; one running event per attempt."""
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    assert [e["data"]["epoch"] for e in events if e["type"] == "metrics"] == list(
        range(1, epochs + 1)
    )
    running = [e["data"]["attempt"] for e in events if e["data"].get("status") == "running"]
    assert running == attempts
