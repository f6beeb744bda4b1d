"""compose.yaml as a person would use it: a fresh clone, `scripts/server-init DOMAIN`, then compose.
Validated with docker-compose's own `config` (installed by scripts/test where apt works); the
resolved file is checked for what would otherwise bite on a server."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP_SERVICES = ("web", "worker", "beat", "bot", "flower")


def _text(command: str | list[str]) -> str:
    return command if isinstance(command, str) else " ".join(command)


def _compose() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true, yet neither docker-compose nor docker compose is installed")
    pytest.skip("docker-compose is not installed")


@pytest.fixture
def clone(tmp_path) -> Path:
    """What a fresh clone holds of it: compose.yaml, the Caddy entrypoint, the init script."""
    for name in (
        "compose.yaml",
        "Dockerfile",
        "docker/caddy/entrypoint.sh",
        "docker/release-base/Dockerfile",
        "scripts/server-init",
    ):
        target = tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    return tmp_path


def _init(clone: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["scripts/server-init", *args], cwd=clone, capture_output=True, text=True)


def test_server_init_writes_an_env_with_generated_secrets_and_refuses_to_overwrite_it(clone):
    done = _init(clone, "factory.example.com")
    assert done.returncode == 0, done.stderr
    env = dict(
        line.split("=", 1) for line in (clone / ".env").read_text().splitlines() if line and not line.startswith("#")
    )
    assert (clone / ".env").stat().st_mode & 0o777 == 0o600
    assert env["PRODUCTION"] == "true" and env["BASE_DOMAIN"] == "factory.example.com"
    assert len(env["DJANGO_SECRET_KEY"]) >= 50 and len(env["POSTGRES_PASSWORD"]) >= 24
    assert env["FLOWER_BASIC_AUTH"].startswith("operator:") and len(env["FLOWER_BASIC_AUTH"]) > 20
    from cryptography.fernet import Fernet

    Fernet(env["SECRETS_ENCRYPTION_KEY"].encode())  # a valid key for the vault
    again = _init(clone, "factory.example.com")
    assert again.returncode == 1 and "not overwriting" in again.stderr
    assert _init(clone, "--out", str(clone / "x.env"), "Not A Domain").returncode == 2


def test_compose_config_is_valid_and_safe_for_one_server(clone):
    compose = _compose()
    assert _init(clone, "factory.example.com").returncode == 0
    done = subprocess.run([*compose, "-f", "compose.yaml", "config"], cwd=clone, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    services = config["services"]
    assert set(services) == {"postgres", "redis", "caddy", "release-base", *APP_SERVICES}
    assert services["worker"]["environment"]["DEPLOY_TARGET"] == "docker"
    assert services["release-base"]["image"] == services["worker"]["environment"]["RELEASE_BASE_IMAGE"]
    for name in APP_SERVICES:
        env = services[name]["environment"]
        assert env["PRODUCTION"] == "true" and env["DJANGO_SECRET_KEY"], name  # from .env, not empty
        assert env["DATABASE_URL"].startswith("postgres://factory:") and "${" not in env["DATABASE_URL"]
        assert services[name]["network_mode"] == "host"
    # Nothing but Caddy faces the network: the rest listen on loopback, no port is published.
    assert all("ports" not in service for service in services.values())
    assert "listen_addresses=127.0.0.1" in services["postgres"]["command"]
    assert "127.0.0.1" in services["redis"]["command"]
    assert "--bind 127.0.0.1:8000" in _text(services["web"]["command"])
    assert services["flower"]["environment"]["FLOWER_BASIC_AUTH"].startswith("operator:")
    assert "manage.py flower" in _text(services["flower"]["command"])
    assert any("docker.sock" in str(v) for v in services["worker"]["volumes"])


def test_the_caddy_entrypoint_routes_the_admin_and_flower_and_keeps_its_admin_api_on_loopback(clone):
    import json

    script = (clone / "docker/caddy/entrypoint.sh").read_text().replace("exec caddy run", "cat /tmp/caddy.json #")
    (clone / "ep.sh").write_text(script)
    out = subprocess.run(
        ["sh", "ep.sh"],
        cwd=clone,
        capture_output=True,
        text=True,
        env={"BASE_DOMAIN": "example.test", "PATH": "/bin:/usr/bin"},
    )
    config = json.loads(out.stdout)
    server = config["apps"]["http"]["servers"]["factory"]
    hosts = [r["match"][0]["host"][0] for r in server["routes"] if "match" in r]
    assert config["admin"]["listen"] == "127.0.0.1:2019"
    assert hosts == ["factory.example.test", "flower.example.test"]
    assert server["routes"][-1]["@id"] == "factory--fallback"
    if shutil.which("caddy"):
        (clone / "caddy.json").write_text(out.stdout)
        check = subprocess.run(["caddy", "validate", "--config", str(clone / "caddy.json")], capture_output=True)
        assert check.returncode == 0, check.stderr.decode()[-500:]
