"""API latency under an open-loop load: GET /api/projects/ and GET /api/runs/<id>/ on gunicorn.

    .venv/bin/python bench/api.py                    # print the figures
    .venv/bin/python bench/api.py --write            # and put them in docs/BENCHMARKS.md

Seeds 1,000 projects of one person (each with a finished run: six stage rows, events, usage; half
of them live), starts gunicorn exactly as compose.yaml's ``web`` service runs it (its command is
read from compose.yaml; only the address changes to a free loopback port), then sends requests
at fixed rates for a bounded time, open loop: request i leaves at t0 + i/rate whatever the server
is doing, on its own connection, and its latency counts from that moment, so queueing shows.
A client gives up after --timeout seconds (counted as a timeout). After each step the server is
probed until it answers fast again: the time it stays busy with requests nobody waits for.

Also measures one page of the list in process (Django's test client): ms, SQL ms, queries.

Uses its own database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/factory_bench2); its tables are emptied and seeded.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/factory_bench2")
os.environ.update(DATABASE_URL=DATABASE_URL, DJANGO_SETTINGS_MODULE="config.settings", LOG_LEVEL="WARNING")
for name in ("REDIS_URL", "CELERY_BROKER_URL"):  # these endpoints never touch the broker
    os.environ.pop(name, None)
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="factory-bench-api-"))


def _create_database() -> None:
    import psycopg

    name = DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


_create_database()

import django  # noqa: E402

django.setup()

import yaml  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402
from rest_framework.authtoken.models import Token  # noqa: E402
from rest_framework.test import APIClient  # noqa: E402

from agents.models import Usage  # noqa: E402
from bench.report import load_now, machine, percentile, write_section  # noqa: E402
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun  # noqa: E402
from projects.runs import STAGE_ORDER  # noqa: E402

PROJECTS = "/api/projects/"


# --- data -----------------------------------------------------------------------------------
def seed(n: int):
    """n projects of one person, each with a finished run as the pipeline leaves it."""
    Project.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench-api")
    token, _ = Token.objects.get_or_create(user=user)
    now = timezone.now()
    projects = Project.objects.bulk_create(
        Project(
            owner=user,
            description=f"a web service number {i} that greets people by name and remembers them",
            name=f"Greeter {i}",
            slug=f"greeter-{i}",
            kind="web_service",
            spec={
                "name": f"Greeter {i}",
                "slug": f"greeter-{i}",
                "kind": "web_service",
                "summary": "Greets people by name.",
                "features": [{"name": f"feature {k}", "summary": "does a thing", "params": {"k": k}} for k in range(3)],
                "env": [{"name": "SECRET_KEY", "source": "generated_secret", "description": "signing"}],
                "acceptance": [
                    {
                        "name": "greets",
                        "method": "GET",
                        "path": "/greet?name=Ada",
                        "expect_status": 200,
                        "expect_contains": "Hello, Ada!",
                    }
                ],
            },
        )
        for i in range(n)
    )
    started = now - timedelta(minutes=10)
    runs = PipelineRun.objects.bulk_create(
        PipelineRun(
            project=p,
            status=PipelineRun.Status.SUCCEEDED,
            current_stage="notify",
            cost_usd=Decimal("0.42"),
            result_message=f"Greeter {i} is live.",
            started_at=started,
            finished_at=now,
        )
        for i, p in enumerate(projects)
    )
    stage_rows = StageRun.objects.bulk_create(
        StageRun(
            run=r,
            stage=s,
            status=StageRun.Status.SUCCEEDED,
            attempt=1,
            started_at=started,
            finished_at=now,
            output={"stage": s, "notes": "done"},
        )
        for r in runs
        for s in STAGE_ORDER
    )
    Usage.objects.bulk_create(
        Usage(
            project_id=row.run.project_id,
            stage_run=row,
            role="developer",
            backend="scripted",
            input_tokens=1000,
            output_tokens=200,
            cost_usd=Decimal("0.07"),
        )
        for row in stage_rows
    )
    RunEvent.objects.bulk_create(
        RunEvent(run=r, type=t, stage=s, payload={"iteration": 1})
        for r in runs
        for s in STAGE_ORDER
        for t in ("stage.started", "stage.succeeded")
    )
    Deployment.objects.bulk_create(
        Deployment(
            project=r.project,
            run=r,
            status=Deployment.Status.LIVE,
            port=20000 + i,
            commit_sha="0" * 40,
            url=f"http://greeter-{i}.localhost",
            live_at=now,
        )
        for i, r in enumerate(runs)
        if i % 2 == 0
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")  # as autovacuum would have by now
    return user, token.key, [r.id for r in runs]


def in_process(user, repeat: int = 20) -> dict:
    """One page of the list, and one run, in this process: ms, SQL ms, queries."""
    client = APIClient()
    client.force_authenticate(user)
    out = {}
    for name, path in (
        ("projects", PROJECTS),
        ("run", f"/api/runs/{PipelineRun.objects.filter(project__owner=user).first().id}/"),
    ):
        client.get(path)  # warm
        times, sql, counts = [], [], []
        for _ in range(repeat):
            spent = []

            def timer(execute, sql_, params, many, context, spent=spent):
                t = time.perf_counter()
                try:
                    return execute(sql_, params, many, context)
                finally:
                    spent.append(time.perf_counter() - t)

            with CaptureQueriesContext(connection) as queries, connection.execute_wrapper(timer):
                t0 = time.perf_counter()
                response = client.get(path)
                times.append((time.perf_counter() - t0) * 1000)
            assert response.status_code == 200, response.content[:500]
            sql.append(sum(spent) * 1000)
            counts.append(len(queries))
        out[name] = {"ms": statistics.median(times), "sql_ms": statistics.median(sql), "queries": max(counts)}
    return out


# --- the server -----------------------------------------------------------------------------
def compose_web_command() -> list[str]:
    """compose.yaml's web command: the gunicorn part, as argv."""
    command = yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]["web"]["command"]
    if isinstance(command, list):
        command = " ".join(command)
    if command.startswith("sh -c"):
        command = shlex.split(command)[2]
    parts = [p.strip().removeprefix("exec ").strip() for p in command.split("&&")]
    return shlex.split(next(p for p in parts if p.startswith("gunicorn")))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, home: Path):
        self.home, self.port, self.proc = home, _free_port(), None
        argv = compose_web_command()
        address = f"127.0.0.1:{self.port}"
        if "--bind" in argv:
            argv[argv.index("--bind") + 1] = address
        else:
            argv += ["--bind", address]
        self.argv = [sys.executable, "-m", *argv]

    def start(self) -> None:
        env = {
            **os.environ,
            "PRODUCTION": "true",
            "LOG_JSON": "true",
            "LOG_LEVEL": "INFO",
            "DJANGO_SECRET_KEY": "bench-api-not-secret",
            "DJANGO_ALLOWED_HOSTS": "127.0.0.1",
            # Production requires a vault key; any valid Fernet key will do (no secret is read).
            "SECRETS_ENCRYPTION_KEY": os.environ.get("SECRETS_ENCRYPTION_KEY")
            or base64.urlsafe_b64encode(os.urandom(32)).decode(),
        }
        with open(self.home / "gunicorn.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"gunicorn did not start: {(self.home / 'gunicorn.log').read_text()[-3000:]}"
                    ) from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- the load -------------------------------------------------------------------------------
async def request(port: int, path: str, token: str, timeout: float) -> int | str:
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Token {token}\r\n"
                f"Connection: close\r\n\r\n".encode()
            )
            await writer.drain()
            data = await reader.read()
        return int(data[9:12]) if data.startswith(b"HTTP/1.") else "error"
    except TimeoutError:
        return "timeout"
    except OSError:
        return "error"
    finally:
        if writer is not None:
            writer.close()


async def open_loop(port: int, paths, token: str, rate: float, seconds: float, timeout: float) -> dict:
    loop = asyncio.get_running_loop()
    results: list[tuple[float, int | str]] = []

    async def one(path: str, at: float) -> None:
        status = await request(port, path, token, timeout)
        results.append((loop.time() - at, status))

    total = int(rate * seconds)
    t0 = loop.time() + 0.05
    tasks = []
    for i in range(total):
        at = t0 + i / rate
        delay = at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(paths(), at)))
    sent_in = loop.time() - t0
    await asyncio.gather(*tasks)
    ok = [lat * 1000 for lat, status in results if status == 200]
    return {
        "rate": rate,
        "sent": total,
        "sent_rate": total / sent_in if sent_in else rate,
        "ok": len(ok),
        "timeouts": sum(1 for _, s in results if s == "timeout"),
        "errors": sum(1 for _, s in results if s not in (200, "timeout")),
        "p50": percentile(ok, 50) if ok else None,
        "p99": percentile(ok, 99) if ok else None,
    }


async def busy_after(port: int, path: str, token: str, limit: float) -> float | None:
    """Seconds until the server answers a new request within 250 ms again (None: not within limit)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < limit:
        t = loop.time()
        status = await request(port, path, token, 2.0)
        if status == 200 and loop.time() - t < 0.25:
            return loop.time() - started
        await asyncio.sleep(0.25)
    return None


async def warm(port: int, endpoints, token: str) -> None:
    """Every worker and thread loads the code and opens its database connection before timing."""
    for _ in range(3):
        for _, paths in endpoints.values():
            await asyncio.gather(*(request(port, paths(), token, 30.0) for _ in range(40)))


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.0f}"


def report(
    when: str, server_argv: list[str], inproc: dict, steps: list[dict], seconds: float, timeout: float, n: int
) -> str:
    lines = [
        f"Measured {when}; load average {load_now()} at the end. Produced by `bench/api.py`: "
        f"{n} projects of one person (each with a finished run:",
        "six stage rows with usage, 12 events, half of them live); gunicorn as compose.yaml runs it "
        f"(`{' '.join(server_argv[2:])}`), PostgreSQL, all on loopback on the same 2 cores as the load generator.",
        f"Open loop, {seconds:.0f} s per step after a warm-up, a new connection per request, clients give up after "
        f"{timeout:.0f} s.",
        "",
        "| in process, one request | ms | SQL ms | queries |",
        "|---|---|---|---|",
    ]
    page = f"`GET /api/projects/` (the default page, {settings.REST_FRAMEWORK['PAGE_SIZE']})"
    for name, label in (("projects", page), ("run", "`GET /api/runs/<id>/`")):
        f = inproc[name]
        lines.append(f"| {label} | {f['ms']:.1f} | {f['sql_ms']:.1f} | {f['queries']} |")
    lines += [
        "",
        "| endpoint | rate (req/s) | sent | ok | timeouts | errors | p50 ms | p99 ms | busy after (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in steps:
        busy = "–" if s["busy"] is None else f"{s['busy']:.1f}"
        if s["busy"] is None:
            busy = f"> {s['busy_limit']:.0f} (restarted)"
        lines.append(
            f"| {s['endpoint']} | {s['rate']:.0f} | {s['sent']} | {s['ok']} | {s['timeouts']} | {s['errors']} | "
            f"{_ms(s['p50'])} | {_ms(s['p99'])} | {busy} |"
        )
    lines += [
        "",
        "- p50 / p99 over the requests answered 200, from the moment each was due to leave.",
        "- busy after: from the end of a step until a new request is answered within 250 ms again.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--projects", type=int, default=1000)
    parser.add_argument("--rates", default="50,100,200")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each step")
    parser.add_argument("--timeout", type=float, default=5.0, help="a client gives up after this long")
    parser.add_argument("--busy-limit", type=float, default=60.0, help="restart the server if still busy after")
    parser.add_argument("--endpoints", default="runs,projects")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--heading", default="API latency under load")
    args = parser.parse_args()

    when = machine()
    home = Path(os.environ["FACTORY_HOME"])
    call_command("migrate", verbosity=0)
    user, token, run_ids = seed(args.projects)
    inproc = in_process(user)
    print(inproc, flush=True)
    server = Server(home)
    rng = random.Random(7)
    endpoints = {
        "projects": ("GET /api/projects/", lambda: PROJECTS),
        "runs": ("GET /api/runs/<id>/", lambda: f"/api/runs/{rng.choice(run_ids)}/"),
    }
    server.start()
    asyncio.run(warm(server.port, endpoints, token))
    steps = []
    try:
        for endpoint in args.endpoints.split(","):
            label, paths = endpoints[endpoint]
            for rate in (float(r) for r in args.rates.split(",")):
                result = asyncio.run(open_loop(server.port, paths, token, rate, args.seconds, args.timeout))
                result["busy"] = asyncio.run(busy_after(server.port, paths(), token, args.busy_limit))
                result.update(endpoint=label, busy_limit=args.busy_limit)
                print(result, flush=True)
                steps.append(result)
                if result["busy"] is None:
                    server.stop()
                    server.start()
                    asyncio.run(warm(server.port, endpoints, token))
    finally:
        server.stop()
    body = report(when, server.argv, inproc, steps, args.seconds, args.timeout, args.projects)
    print(body)
    if args.write:
        write_section(args.heading, body)
        print("\nwritten to docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
