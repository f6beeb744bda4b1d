"""The Docker runtime against a real engine and the worker test image (scripts/worker-image).

Skipped when no engine answers, except in CI (CI=true), where a missing engine is a failure.
Every container a test makes carries a label unique to that test and is removed afterwards.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

import docker
from config.errors import PermanentError, TransientError
from orchestrator.runtime import get_runtime
from orchestrator.runtime.base import INSTANCE_MARKER, SESSION_MARKER, WorkerGone, WorkerSpec, factory_instance
from orchestrator.runtime.docker import DockerRuntime
from tests.conftest import TEST_IMAGE  # noqa: F401 (the engine and worker_image fixtures live there)

pytestmark = pytest.mark.docker

ROOT = Path(__file__).resolve().parents[2]

MIB = 1024 * 1024


class Harness:
    def __init__(self, engine: docker.DockerClient, tmp_path: Path):
        self.engine = engine
        self.rt = DockerRuntime()
        self.tag = uuid.uuid4().hex[:12]
        self.labels = {"factory.test": self.tag}
        self.ws = tmp_path / "ws"

    def spec(self, session_id: int, **kwargs) -> WorkerSpec:
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(self.ws)}
        return WorkerSpec(
            session_id=session_id,
            workspace=self.ws,
            env=env,
            labels={**self.labels, "factory.session": str(session_id)},
            **kwargs,
        )

    def create(self, session_id: int, **kwargs) -> str:
        return self.rt.create(self.spec(session_id, **kwargs))

    def run(self, handle: str, argv: list[str], *, timeout: float = 20, cwd: Path | None = None, **env: str):
        return self.rt.exec(handle, argv, cwd=cwd or self.ws, env={"PATH": "/usr/bin:/bin", **env}, timeout=timeout)

    def container(self, handle: str):
        return self.engine.containers.get(handle)

    def mine(self) -> list:
        return self.engine.containers.list(
            all=True, filters={"label": ["factory.managed=true", f"factory.test={self.tag}"]}
        )


@pytest.fixture
def h(engine, worker_image, settings, tmp_path):
    settings.WORKER_IMAGE = worker_image
    settings.WORKER_NETWORK_MODE = "host"
    harness = Harness(engine, tmp_path)
    yield harness
    for container in harness.mine():
        container.remove(force=True)


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_get_runtime_docker_is_the_docker_runtime(settings):
    rt = get_runtime("docker")
    assert (rt.name, rt.python, rt.factory_path) == ("docker", "python3", "/opt/factory")


def test_create_starts_a_labelled_limited_container_with_the_workspace_at_the_same_path(h):
    handle = h.create(9101, cpu_limit=0.5, memory_limit_mb=256)
    container = h.container(handle)
    config, host = container.attrs["Config"], container.attrs["HostConfig"]
    assert container.status == "running"
    assert config["Image"] == TEST_IMAGE
    assert config["Labels"]["factory.managed"] == "true"
    assert config["Labels"][SESSION_MARKER] == "9101"
    assert config["Labels"]["factory.session"] == "9101"
    assert config["Labels"]["factory.test"] == h.tag
    assert config["Labels"][INSTANCE_MARKER] == factory_instance()
    assert f"{SESSION_MARKER}=9101" in config["Env"]
    assert f"{INSTANCE_MARKER}={factory_instance()}" in config["Env"]
    assert config["User"] == f"{os.getuid()}:{os.getgid()}"
    assert host["NanoCpus"] == 500_000_000
    assert host["Memory"] == 256 * MIB
    assert host["NetworkMode"] == "host"
    assert host["AutoRemove"] is True
    mounts = {m["Destination"]: m for m in container.attrs["Mounts"]}
    assert mounts[str(h.ws)]["Source"] == str(h.ws.resolve())
    assert mounts[str(h.ws)]["RW"] is True
    assert mounts["/opt/factory"]["RW"] is False
    assert h.rt.is_alive(handle)


def test_network_mode_comes_from_the_setting(h, settings):
    settings.WORKER_NETWORK_MODE = "none"
    handle = h.create(9102)
    assert h.container(handle).attrs["HostConfig"]["NetworkMode"] == "none"


def test_a_missing_image_is_a_permanent_error_and_nothing_is_pulled(h, settings):
    settings.WORKER_IMAGE = "factory-worker:no-such-tag"
    with pytest.raises(PermanentError) as err:
        h.create(9103)
    assert err.value.code == "worker_image_missing"
    assert h.mine() == []


def test_exec_runs_in_cwd_with_env_and_keeps_stdout_and_stderr_apart(h):
    handle = h.create(9104)
    sub = h.ws / "sub" / "dir"
    sub.mkdir(parents=True)
    script = "import os, sys; print(os.getcwd(), os.environ['GREETING']); print('oops', file=sys.stderr); sys.exit(3)"
    result = h.run(handle, ["python3", "-c", script], cwd=sub, GREETING="hello")
    assert (result.exit_code, result.timed_out, result.ok) == (3, False, False)
    assert result.stdout == f"{sub} hello\n"
    assert result.stderr == "oops\n"


def test_the_factory_code_is_importable_in_the_worker_and_read_only(h):
    handle = h.create(9105)
    rt = h.rt
    result = h.run(
        handle,
        [rt.python, "-c", "import agents.scripted.agent as a; print(a.__file__)"],
        PYTHONPATH=rt.factory_path,
        PYTHONDONTWRITEBYTECODE="1",
    )
    assert result.ok, result.stderr
    assert result.stdout.strip() == "/opt/factory/agents/scripted/agent.py"
    assert not h.run(handle, ["touch", "/opt/factory/written-by-a-worker"]).ok


def test_the_factory_secrets_and_home_are_masked_in_the_worker(h, settings, tmp_path):
    tree = tmp_path / "factory"
    (tree / "agents").mkdir(parents=True)
    (tree / "agents" / "__init__.py").write_text("")
    (tree / ".env").write_text("DJANGO_SECRET_KEY=do-not-leak\n")
    (tree / "home").mkdir()
    (tree / "home" / "db.sqlite3").write_text("the factory's database")
    settings.BASE_DIR = tree
    settings.FACTORY_HOME = tree / "home"
    handle = h.create(9106)
    assert h.run(handle, ["test", "-f", "/opt/factory/agents/__init__.py"]).ok
    assert h.run(handle, ["cat", "/opt/factory/.env"]).stdout == ""
    assert h.run(handle, ["ls", "-A", "/opt/factory/home"]).stdout == ""


def test_files_written_in_the_worker_belong_to_the_host_user_and_host_git_reads_them(h):
    handle = h.create(9107)
    identity = {
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@x.invalid",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@x.invalid",
        "HOME": str(h.ws),
    }
    made = h.run(
        handle,
        ["sh", "-c", "git init -q repo && cd repo && echo hi > f && git add f && git commit -qm one"],
        **identity,
    )
    assert made.ok, made.stderr
    assert (h.ws / "repo" / "f").stat().st_uid == os.getuid()
    assert (h.ws / "repo" / "f").stat().st_gid == os.getgid()
    log = subprocess.run(["git", "-C", str(h.ws / "repo"), "log", "--format=%s"], capture_output=True, text=True)
    assert (log.returncode, log.stdout) == (0, "one\n")


def test_exec_timeout_kills_the_command_and_its_children_and_says_so(h):
    handle = h.create(9108)
    started = time.monotonic()
    result = h.run(handle, ["sh", "-c", "echo started; sleep 300 & echo $! > child; echo $$ > parent; wait"], timeout=1)
    elapsed = time.monotonic() - started
    assert result.timed_out and not result.ok
    assert result.exit_code == -9
    assert result.stdout == "started\n"
    assert 1 <= elapsed < 5
    for name in ("parent", "child"):
        pid = (h.ws / name).read_text().strip()
        assert wait_until(lambda pid=pid: not h.run(handle, ["test", "-e", f"/proc/{pid}"]).ok), (
            f"{name} {pid} survived"
        )


def test_exec_returns_when_the_command_is_done_even_if_a_background_child_holds_its_output(h):
    handle = h.create(9109)
    started = time.monotonic()
    result = h.run(handle, ["sh", "-c", "echo serving; sleep 300 &"], timeout=30)
    assert (result.exit_code, result.timed_out, result.stdout) == (0, False, "serving\n")
    assert time.monotonic() - started < 5


def test_pause_really_stops_output_and_unpause_resumes_it(h):
    handle = h.create(9110)
    ticks = h.ws / "ticks"
    writer = h.run(handle, ["sh", "-c", f"(while true; do echo x >> {ticks}; sleep 0.05; done) >/dev/null 2>&1 &"])
    assert writer.ok
    assert wait_until(lambda: ticks.exists() and ticks.read_text().count("x") >= 3)
    h.rt.pause(handle)
    h.rt.pause(handle)  # pausing a paused worker is no error
    assert h.container(handle).status == "paused"
    assert h.rt.is_alive(handle)
    assert [w.running for w in h.rt.list_workers() if w.handle == handle] == [False]
    time.sleep(0.2)
    frozen = ticks.read_text().count("x")
    time.sleep(0.6)
    assert ticks.read_text().count("x") == frozen
    with pytest.raises(PermanentError):
        h.run(handle, ["true"])
    h.rt.unpause(handle)
    h.rt.unpause(handle)  # resuming a running worker is no error
    assert wait_until(lambda: ticks.read_text().count("x") > frozen + 3)
    assert h.container(handle).status == "running"


def test_terminate_removes_the_worker_even_paused_and_twice_is_no_error(h, engine):
    handle = h.create(9111)
    h.run(handle, ["sh", "-c", "sleep 300 >/dev/null 2>&1 &"])
    h.rt.pause(handle)
    h.rt.terminate(handle)
    with pytest.raises(docker.errors.NotFound):
        engine.containers.get(handle)
    assert not h.rt.is_alive(handle)
    h.rt.terminate(handle)
    with pytest.raises(WorkerGone):
        h.run(handle, ["true"])
    with pytest.raises(WorkerGone):
        h.rt.pause(handle)


def test_a_killed_container_is_not_alive_exec_in_it_raises_worker_gone_and_the_engine_removes_it(h):
    handle = h.create(9112)
    assert h.rt.is_alive(handle)
    h.container(handle).kill()
    assert wait_until(lambda: not h.rt.is_alive(handle))
    with pytest.raises(WorkerGone):
        h.run(handle, ["true"])
    with pytest.raises(WorkerGone):
        h.rt.stats(handle)
    with pytest.raises(WorkerGone):
        h.rt.unpause(handle)
    assert handle not in {w.handle for w in h.rt.list_workers()}
    assert wait_until(
        lambda: h.mine() == [], timeout=20
    )  # auto_remove: no dead container is left behind (the engine is slow under load)
    h.rt.terminate(handle)


def test_stats_report_cpu_time_and_memory_in_use(h):
    handle = h.create(9113)
    before = h.rt.stats(handle)
    burn = h.run(handle, ["python3", "-c", "import time\nend = time.time() + 0.5\nwhile time.time() < end: pass"])
    assert burn.ok
    after = h.rt.stats(handle)
    assert after.cpu_seconds - before.cpu_seconds >= 0.3
    assert after.memory_bytes and after.memory_bytes > 100_000


def test_list_workers_finds_an_orphan_started_by_hand_but_not_other_containers(h, engine, worker_image):
    ours = h.create(9114)

    def by_hand(**labels: str):
        return engine.containers.run(
            worker_image, ["sleep", "infinity"], detach=True, network_mode="none", labels={**h.labels, **labels}
        )

    mine = {"factory.managed": "true", INSTANCE_MARKER: factory_instance()}
    orphan = by_hand(**mine, **{SESSION_MARKER: "9115"})
    unmanaged = by_hand(**{INSTANCE_MARKER: factory_instance(), SESSION_MARKER: "9116"})
    other_installation = by_hand(**{**mine, INSTANCE_MARKER: "another-factory", SESSION_MARKER: "9117"})
    try:
        found = {w.handle: w for w in h.rt.list_workers()}
        assert set(found) == {ours, orphan.id}
        assert (found[orphan.id].session_id, found[orphan.id].running) == (9115, True)
        assert (found[ours].session_id, found[ours].running) == (9114, True)
        assert found[ours].labels["factory.session"] == "9114"
        h.rt.terminate(orphan.id)
        assert not h.rt.is_alive(orphan.id)
        assert {w.handle for w in h.rt.list_workers()} == {ours}
    finally:
        unmanaged.remove(force=True)
        other_installation.remove(force=True)


def test_an_unreachable_engine_is_a_transient_error(h, monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    with pytest.raises(TransientError):
        h.rt.list_workers()
    with pytest.raises(TransientError):
        h.rt.create(h.spec(9117))


def test_the_reaper_removes_an_orphan_even_when_no_docker_session_is_live(h, engine, worker_image, db):
    """Each configured runtime is reconciled on every sweep, not only where a session is live."""
    from agents import services as agent_services
    from agents.models import WorkerSession
    from orchestrator import maintenance

    agent_services.agent_config_set(role="tester", runtime="docker")
    assert not WorkerSession.objects.filter(state__in=WorkerSession.LIVE).exists()
    mine = {"factory.managed": "true", INSTANCE_MARKER: factory_instance(), SESSION_MARKER: "9120"}
    orphan = engine.containers.run(
        worker_image, ["sleep", "infinity"], detach=True, network_mode="none", labels={**h.labels, **mine}
    )
    try:
        report = maintenance.workers_reap()
        assert orphan.id in report.orphans
        assert not h.rt.is_alive(orphan.id)
    finally:
        try:
            orphan.remove(force=True)
        except docker.errors.NotFound:
            pass
