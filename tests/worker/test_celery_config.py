"""The Celery configuration and the embedded SQLite broker transport."""

from __future__ import annotations

from pathlib import Path

from kombu import Connection, Exchange, Queue

from service.cli import worker_argv
from service.core.settings import Settings
from service.jobs.queue import RUN_JOB_TASK, broker_params, celery_config, make_celery


def _settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


def test_long_task_settings() -> None:
    conf = celery_config(_settings(training_queue="train-q", visibility_timeout=7200))
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1
    assert conf["task_default_queue"] == "train-q"
    assert conf["task_routes"][RUN_JOB_TASK] == {"queue": "train-q"}
    assert conf["broker_transport_options"]["visibility_timeout"] == 7200
    assert conf["task_ignore_result"] is True


def test_embedded_broker_uses_sqlite_safe_transport(tmp_path: Path) -> None:
    url = f"sqla+sqlite:///{tmp_path / 'b.db'}"
    assert broker_params(url) == (f"sqlite:///{tmp_path / 'b.db'}", "service.jobs.broker:Transport")
    assert broker_params("redis://h:6379/0") == ("redis://h:6379/0", None)
    conf = celery_config(_settings(broker_url=url, broker_poll_seconds=0.05))
    assert conf["broker_transport_options"]["polling_interval"] == 0.05
    assert conf["worker_enable_remote_control"] is False
    assert celery_config(_settings(broker_url="redis://h/0"))["worker_enable_remote_control"]


def test_embedded_transport_round_trip_with_celery_options(tmp_path: Path) -> None:
    """kombu's stock sqla transport would pass these options to create_engine and fail."""
    settings = _settings(broker_url=f"sqla+sqlite:///{tmp_path / 'b.db'}")
    app = make_celery(settings)
    queue = Queue("rt", Exchange("rt"), "rt")
    with app.connection_for_write() as conn:
        assert isinstance(conn, Connection)
        assert conn.transport.polling_interval == settings.broker_poll_seconds
        with conn.Producer() as producer:
            producer.publish({"n": 1}, exchange=queue.exchange, routing_key="rt", declare=[queue])
        message = conn.SimpleQueue(queue).get(timeout=5)
        assert message.payload == {"n": 1}
        message.ack()


def test_worker_argv_is_solo_on_the_training_queue() -> None:
    argv = worker_argv(_settings(training_queue="tq", broker_url="sqla+sqlite:////x/b.db"))
    assert argv[0] == "--broker=sqlite:////x/b.db" and argv[1] == "worker"
    assert {"--pool=solo", "--concurrency=1", "--queues=tq"} <= set(argv)
