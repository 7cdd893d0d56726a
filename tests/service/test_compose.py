"""docker-compose.yml, the Procfile and the Dockerfile agree with what the tests run.

No Docker engine runs here, so this checks the file itself: the process commands are the
``lora-service`` commands the end-to-end tests start, every variable is a Settings field,
the URLs point at the compose services, the worker consumes the training queue, and
``docker-compose config -q`` accepts the file when the binary is installed.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.cli import PROCESS_COMMANDS, worker_argv
from service.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("migrate", "api", "worker")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _e2e_commands() -> dict[str, list[str]]:
    """The commands tests/e2e starts (imported from its helper module by path)."""
    module = sys.modules.get("e2e_stack")
    if module is None:
        path = ROOT / "tests" / "e2e" / "e2e_stack.py"
        spec = importlib.util.spec_from_file_location("e2e_stack", path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        sys.modules["e2e_stack"] = module
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    return {
        "migrate": module.MIGRATE_COMMAND,
        "api": module.API_COMMAND,
        "worker": module.WORKER_COMMAND,
    }


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_commands_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    e2e = _e2e_commands()
    services = compose["services"]
    for name in APP_SERVICES:
        command = services[name]["command"]
        expected = PROCESS_COMMANDS[name]
        assert e2e[name] == expected
        assert command[: len(expected)] == expected, (name, command)
    # the worker may only add its node name, never another queue or pool
    extra = services["worker"]["command"][len(PROCESS_COMMANDS["worker"]) :]
    assert extra in ([], ["--name", "worker"])


def test_procfile_runs_the_same_commands() -> None:
    lines = [ln for ln in (ROOT / "Procfile").read_text().splitlines() if ":" in ln]
    procs = {
        name.strip(): cmd.split()
        for name, cmd in (ln.split(":", 1) for ln in lines if not ln.startswith("#"))
    }
    assert procs == {"api": PROCESS_COMMANDS["api"], "worker": PROCESS_COMMANDS["worker"]}


def test_every_variable_is_a_setting(compose: dict[str, Any]) -> None:
    fields = {name.upper() for name in Settings.model_fields}
    for name in APP_SERVICES:
        unknown = set(_env(compose["services"][name])) - fields
        assert not unknown, f"{name}: not Settings fields: {sorted(unknown)}"


def test_urls_point_at_compose_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    pg_env = _env(services["postgres"])
    for name in APP_SERVICES:
        env = _env(services[name])
        db = make_url(env["DATABASE_URL"])
        assert db.get_backend_name() == "postgresql" and db.host == "postgres"
        assert (db.port or 5432) == 5432
        assert db.database == pg_env["POSTGRES_DB"] and db.username == pg_env["POSTGRES_USER"]
        assert db.password == pg_env["POSTGRES_PASSWORD"]
        broker = make_url(env["BROKER_URL"])
        assert broker.drivername == "redis" and broker.host == "redis"
        assert env["API_KEYS"].startswith("${API_KEYS")  # required from the environment


def test_worker_consumes_the_training_queue(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker_env, api_env = _env(services["worker"]), _env(services["api"])
    assert worker_env["TRAINING_QUEUE"] == api_env["TRAINING_QUEUE"]
    settings = Settings(training_queue=worker_env["TRAINING_QUEUE"], _env_file=None)
    argv = worker_argv(settings)
    assert f"--queues={worker_env['TRAINING_QUEUE']}" in argv and "--pool=solo" in argv


def test_stack_shape(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "api", "worker"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # scalable: --scale worker=N needs no fixed name or published port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    # one artifact volume, mounted where ARTIFACT_DIR says, in the API and every worker
    for name in ("api", "worker"):
        mounts = dict(v.split(":", 1) for v in services[name]["volumes"])
        assert mounts["artifacts"] == _env(services[name])["ARTIFACT_DIR"]
    assert "artifacts" in compose["volumes"]
    assert services["api"]["build"] == services["worker"]["build"] == "."


def test_dockerfile_is_one_image_of_the_project() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 1 and "FROM python:3.11-slim" in text
    assert "pip install" in text and '"lora-service"' in text


def test_probes_and_prometheus_find_every_process(compose: dict[str, Any]) -> None:
    """Health checks use the probes; Prometheus scrapes the API and, by DNS service
    discovery, every scaled worker on the port the workers are told to use."""
    services = compose["services"]
    api_check = " ".join(services["api"]["healthcheck"]["test"])
    assert "/health/ready" in api_check and str(_env(services["api"])["PORT"]) in api_check
    assert services["worker"]["healthcheck"]["test"] == ["CMD", "lora-service", "worker-health"]
    assert "/health/live" in (ROOT / "Dockerfile").read_text()
    worker_env = _env(services["worker"])
    port = Settings(
        _env_file=None, worker_metrics_port=worker_env["WORKER_METRICS_PORT"]
    ).worker_metrics_port
    assert str(port) in services["worker"]["expose"]
    assert worker_env["WORKER_HEARTBEAT_FILE"].startswith("/tmp/")
    for name in APP_SERVICES:
        env = _env(services[name])
        assert env["LOG_FORMAT"] == "json" and env["METRICS_TOKEN"].startswith("${METRICS_TOKEN")
    prom = services["prometheus"]
    mount = next(v for v in prom["volumes"] if v.startswith("./deploy/prometheus.yml:"))
    config = yaml.safe_load((ROOT / mount.split(":")[0]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    api_sd = jobs["lora-api"]["dns_sd_configs"][0]
    assert api_sd["names"] == ["api"] and api_sd["port"] == int(_env(services["api"])["PORT"])
    assert jobs["lora-api"]["metrics_path"] == "/metrics"
    assert jobs["lora-api"]["authorization"]["credentials_file"] in " ".join(prom["command"])
    worker_sd = jobs["lora-worker"]["dns_sd_configs"][0]
    assert worker_sd == {**worker_sd, "names": ["worker"], "type": "A", "port": port}


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_docker_compose_config_validates() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        env={"API_KEYS": "k1,k2", "METRICS_TOKEN": "t", "PATH": "/usr/bin:/bin:/usr/local/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
