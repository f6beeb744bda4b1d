"""Engine overhead and latency under load: the pipeline engine against raw Celery, one run.

    .venv/bin/python bench/engine.py                 # print the figures
    .venv/bin/python bench/engine.py --write         # and put them in docs/BENCHMARKS.md

Starts one real Celery worker (prefork, --concurrency 2, as compose runs it) on Redis and
PostgreSQL, then measures, with the same broker and the same worker:

1. queries per stage, in this process: every stage of a few runs through ``pipeline.execute``
   with each query sorted by what issued it (the claim, the record of the outcome, the events'
   notifications, the stage's own work);
2. raw Celery: N five-task chains of no-op tasks (bench/engine_tasks.py), tasks per second;
3. the engine: M runs submitted one after another, every stage's work a no-op
   (``BENCH_STAGE_MODULE=bench.noop_stage``; the claim, record and events are the real ones and
   Notify is the real stage), stage tasks per second and database connections opened per task;
4. latency under load: 100 runs submitted at once (one transaction), each run's latency from
   the submission to its end against the time for all of them to finish.

It uses its own database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/factory_bench2; its tables are emptied) and starts its own
redis-server on a free loopback port (or uses BENCH_REDIS_URL, whose db it flushes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DATABASE_URL = os.environ.get("BENCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/factory_bench2")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _private_redis() -> tuple[str, subprocess.Popen | None]:
    """A Redis server of the benchmark's own on loopback, so no other worker takes its messages."""
    if os.environ.get("BENCH_REDIS_URL"):
        return os.environ["BENCH_REDIS_URL"], None
    port = _free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start") from None
            time.sleep(0.05)
    return f"redis://127.0.0.1:{port}/0", proc


REDIS_URL, REDIS_PROC = _private_redis()
os.environ.update(
    DATABASE_URL=DATABASE_URL,
    REDIS_URL=REDIS_URL,
    DJANGO_SETTINGS_MODULE="config.settings",
    BENCH_STAGE_MODULE="bench.noop_stage",
    PROJECT_CREATE_LIMIT="0",
    LOG_LEVEL="WARNING",
)
os.environ.pop("CELERY_BROKER_URL", None)
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="factory-bench-engine-"))


def _create_database() -> None:
    import psycopg

    name = DATABASE_URL.rsplit("/", 1)[1]
    with psycopg.connect(DATABASE_URL.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


_create_database()

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from celery import chain, signature  # noqa: E402
from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, transaction  # noqa: E402

from bench.engine_tasks import DONE_KEY  # noqa: E402
from bench.report import load_now, machine, percentile, write_section  # noqa: E402
from orchestrator import pipeline  # noqa: E402
from projects import services  # noqa: E402
from projects.models import PipelineRun, Project, RunEvent  # noqa: E402
from projects.runs import STAGE_ORDER  # noqa: E402

# compose runs the pipeline worker at WORKER_CONCURRENCY (8 by default: MAX_WORKERS agent
# stages can be under way at once); BENCH_CONCURRENCY=2 gives the figure at the old setting.
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
STAGES_PER_RUN = len(STAGE_ORDER)
PEOPLE = 10
RUNS_PER_PERSON = int(os.environ.get("RUNS_PER_PERSON", "4"))
TASKS_PER_RUN = STAGES_PER_RUN  # a new run's first message is its Architect task
PHASES = ("execute", "claim", "work", "record", "notifications")


# --- queries per stage, in this process ---------------------------------------------------
def _phase_of_query() -> str:
    """Which part of the engine issued the query being run, from the Python stack."""
    names: set[str] = set()
    files: list[str] = []
    frame = sys._getframe(2)
    while frame is not None:
        files.append(frame.f_code.co_filename)
        names.add(frame.f_code.co_name)
        frame = frame.f_back
    if any(f.endswith(os.path.join("projects", "notifications.py")) for f in files):
        return "notifications"
    if any(os.path.join("orchestrator", "stages") in f or f.endswith("noop_stage.py") for f in files):
        return "work"
    if "stage_claim" in names:
        return "claim"
    if names & {"stage_succeed", "stage_fail", "stage_release", "stage_loop_back"}:
        return "record"
    return "execute"


def count_queries(runs: int) -> dict:
    """Run every stage of ``runs`` runs in this process, counting queries by phase and stage."""
    per_stage: dict[str, list[Counter]] = defaultdict(list)
    ms: dict[str, list[float]] = defaultdict(list)
    sql_ms: dict[str, list[float]] = defaultdict(list)
    user = get_user_model().objects.get(username="bench")
    ids = [services.project_create(owner=user, description=f"bench queries {i}")[1].id for i in range(runs)]
    for run_id in ids:
        for stage in STAGE_ORDER:
            seen: Counter = Counter()

            def wrapper(execute, sql, params, many, context, seen=seen, stage=stage):
                seen[_phase_of_query()] += 1
                started = time.perf_counter()
                try:
                    return execute(sql, params, many, context)
                finally:
                    sql_ms[stage].append((time.perf_counter() - started) * 1000)

            started = time.perf_counter()
            with connection.execute_wrapper(wrapper):
                outcome = pipeline.execute(stage=stage, run_id=run_id, task_id=f"bench-{run_id}-{stage}")
            ms[stage].append((time.perf_counter() - started) * 1000)
            assert outcome is not None, f"{stage} of run {run_id} was busy"
            per_stage[stage].append(seen)
    assert PipelineRun.objects.filter(id__in=ids, status=PipelineRun.Status.SUCCEEDED).count() == runs
    return {"per_stage": per_stage, "ms": ms, "sql_ms": {k: sum(v) / runs for k, v in sql_ms.items()}}


# --- the worker -----------------------------------------------------------------------------
class Worker:
    def __init__(self, home: Path):
        env = {**os.environ, "LOG_LEVEL": "INFO", "LOG_JSON": "true", "PYTHONUNBUFFERED": "1"}
        self.log = home / "worker.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-I",
                    "bench.engine_tasks",
                    "-Q",
                    "pipeline",
                    f"--concurrency={CONCURRENCY}",
                    "--loglevel=INFO",
                    "--without-gossip",
                    "--without-mingle",
                    "-n",
                    f"bench-engine-{os.getpid()}@%h",
                ],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while " ready." not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# --- CPU time, the steadier measure on shared cores -------------------------------------------
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()  # fields from the state on (the name may hold spaces)


def serving_pids(worker: Worker) -> list[int]:
    """The processes that serve the load: the worker's whole session (main process and pool),
    the private Redis, and the PostgreSQL backends of this database but this process's own."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        own = cursor.fetchone()[0]
    name = DATABASE_URL.rsplit("/", 1)[1]
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == own:
            continue
        fields = _stat(int(entry.name))
        if fields is None:
            continue
        if int(fields[3]) == worker.proc.pid or (REDIS_PROC is not None and int(entry.name) == REDIS_PROC.pid):
            pids.append(int(entry.name))
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if cmdline.startswith(b"postgres: ") and f" {name} ".encode() in cmdline:
            pids.append(int(entry.name))
    return pids


class CpuMeter:
    """CPU seconds (user + system) spent by the serving processes between start() and stop()."""

    def __init__(self, worker: Worker):
        self.worker = worker

    def _sample(self) -> dict[int, float]:
        out = {}
        for pid in serving_pids(self.worker):
            fields = _stat(pid)
            if fields is not None:
                out[pid] = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        return out

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> float:
        after = self._sample()
        return sum(after[pid] - self.before.get(pid, 0.0) for pid in after)


def wait_until(done, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def db_sessions() -> int:
    """Connections ever opened to this database (PostgreSQL's own counter)."""
    time.sleep(1.1)  # backends report their statistics at most once a second
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
        return cursor.fetchone()[0]


# --- the three load phases ----------------------------------------------------------------
def raw_celery(client: redis.Redis, chains: int) -> dict:
    client.delete(DONE_KEY)
    started = time.time()
    for i in range(chains):
        chain(
            *(signature("bench.noop", immutable=True) for _ in range(4)),
            signature("bench.chain_done", args=(i,), immutable=True),
        ).apply_async()
    wait_until(lambda: client.llen(DONE_KEY) >= chains, 600, "the raw chains")
    done = [float(item.split()[1]) - started for item in client.lrange(DONE_KEY, 0, -1)]
    elapsed = max(done)
    return {
        "chains": chains,
        "tasks": 5 * chains,
        "seconds": elapsed,
        "tasks_per_s": 5 * chains / elapsed,
        "latency": done,
    }


def _finished(ids: list[int]) -> bool:
    return PipelineRun.objects.filter(id__in=ids, finished_at__isnull=False).count() >= len(ids)


def engine_runs(people: list, runs: int) -> dict:
    sessions_before = db_sessions()
    started = time.time()
    ids = [
        services.project_create(owner=people[i % len(people)], description=f"bench throughput {i}")[1].id
        for i in range(runs)
    ]
    wait_until(lambda: _finished(ids), 900, "the engine's runs")
    finished = [
        f.timestamp() - started for f in PipelineRun.objects.filter(id__in=ids).values_list("finished_at", flat=True)
    ]
    elapsed = max(finished)
    opened = db_sessions() - sessions_before
    assert PipelineRun.objects.filter(id__in=ids, status=PipelineRun.Status.SUCCEEDED).count() == runs
    return {
        "runs": runs,
        "seconds": elapsed,
        "stage_tasks_per_s": STAGES_PER_RUN * runs / elapsed,
        "connections_per_task": opened / (TASKS_PER_RUN * runs),
    }


def engine_batch(people: list, runs: int) -> dict:
    with transaction.atomic():  # every run's start is sent when this commits: all at once
        ids = [
            services.project_create(owner=people[i % len(people)], description=f"bench batch {i}")[1].id
            for i in range(runs)
        ]
    submitted = time.time()
    wait_until(lambda: _finished(ids), 900, "the batch")
    latency = [
        f.timestamp() - submitted for f in PipelineRun.objects.filter(id__in=ids).values_list("finished_at", flat=True)
    ]
    assert PipelineRun.objects.filter(id__in=ids, status=PipelineRun.Status.SUCCEEDED).count() == runs
    return {
        "runs": runs,
        "latency": latency,
        "all": max(latency),
        "stage_tasks_per_s": STAGES_PER_RUN * runs / max(latency),
    }


def task_runtimes(log: Path) -> dict[str, tuple[int, float]]:
    """From the worker's JSON log: each task name's count and median run time (ms), as Celery
    measured it ("Task <name>[<id>] succeeded in <s>s"; retried tasks are counted apart)."""
    seen: dict[str, list[float]] = defaultdict(list)
    pattern = re.compile(r"Task (\S+)\[[^\]]*\] succeeded in ([0-9.e-]+)s")
    for line in log.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        match = pattern.match(str(json.loads(line).get("event", "")))
        if match:
            seen[match.group(1)].append(float(match.group(2)) * 1000)
    return {name: (len(ms), statistics.median(ms)) for name, ms in seen.items()}


# --- the report -----------------------------------------------------------------------------
def report(
    queries: dict,
    raw: dict,
    engine: dict,
    batch: dict,
    redis_per_event: float | None,
    when: str,
    runtimes: dict[str, tuple[int, float]],
) -> str:
    per_stage, ms = queries["per_stage"], queries["ms"]
    ratio = engine["stage_tasks_per_s"] / raw["tasks_per_s"]
    lat, total = batch["latency"], batch["all"]
    raw_lat = raw["latency"]
    lines = [
        f"Measured {when}; load average {load_now()} at the end. Produced by `bench/engine.py`: one Celery "
        f"worker (prefork, concurrency {CONCURRENCY}, `--loglevel=INFO`, JSON logs) on a private Redis, "
        f"PostgreSQL, in one run; the engine's runs are {PEOPLE} people's in turn (RUNS_PER_PERSON="
        f"{RUNS_PER_PERSON}).",
        "",
        "| what | figure |",
        "|---|---|",
        f"| raw Celery: {raw['chains']} five-task no-op chains | {raw['tasks_per_s']:.0f} tasks/s "
        f"({raw['seconds']:.1f} s) |",
        f"| engine, no-op stages: {engine['runs']} runs submitted one by one | {engine['stage_tasks_per_s']:.0f} "
        f"stage tasks/s ({engine['seconds']:.1f} s) |",
        f"| **ratio engine / raw** | **{ratio:.2f}×** |",
        f"| CPU per task, worker + Redis + PostgreSQL: raw / engine (per stage task) | "
        f"{raw['cpu_ms_per_task']:.2f} / {engine['cpu_ms_per_task']:.2f} ms |",
        f"| **ratio of CPU per task, raw / engine** (the rate ratio on cores of their own) | "
        f"**{raw['cpu_ms_per_task'] / engine['cpu_ms_per_task']:.2f}×** |",
        f"| database connections opened per task (engine) | {engine['connections_per_task']:.2f} |",
        f"| Redis connections opened per event (in process) | "
        f"{'n/a' if redis_per_event is None else f'{redis_per_event:.2f}'} |",
        f"| {batch['runs']} runs submitted at once: p50 / p90 / max latency | {percentile(lat, 50):.1f} / "
        f"{percentile(lat, 90):.1f} / {max(lat):.1f} s |",
        f"| **p50 latency / time for all to finish** | **{percentile(lat, 50) / total:.2f}** |",
        f"| the batch's throughput | {batch['stage_tasks_per_s']:.0f} stage tasks/s |",
        f"| raw Celery's chains, for comparison: p50 latency / time for all | "
        f"{percentile(raw_lat, 50) / max(raw_lat):.2f} |",
        "",
        "Queries per stage (median over the runs, in process through `pipeline.execute`), by what issued them:",
        "",
        "| stage | " + " | ".join(PHASES) + " | total | ms | of it in SQL |",
        "|---|" + "---|" * (len(PHASES) + 3),
    ]
    engine_only, told = [], []
    for stage in STAGE_ORDER:
        counters = per_stage[stage]
        cells = [statistics.median(c[p] for c in counters) for p in PHASES]
        total_q = statistics.median(sum(c.values()) for c in counters)
        if stage != "notify":
            engine_only.append(statistics.median(c["execute"] + c["claim"] + c["record"] for c in counters))
            told.append(statistics.median(c["notifications"] for c in counters))
        lines.append(
            f"| {stage} | " + " | ".join(f"{c:g}" for c in cells) + f" | {total_q:g} | "
            f"{statistics.median(ms[stage]):.1f} | {queries['sql_ms'][stage]:.1f} |"
        )
    lines += [
        "",
        "Run time of each task in the worker (Celery's own measure, median over every run of the three phases; "
        "a stage task retried while its run waits for its turn counts once per try):",
        "",
        "| task | runs | median ms |",
        "|---|---|---|",
        *(f"| `{name}` | {n} | {ms:.2f} |" for name, (n, ms) in sorted(runtimes.items())),
    ]
    lines += [
        "",
        f"Engine queries per stage (execute + claim + record, events included), architect to deployer: "
        f"{min(engine_only):g}–{max(engine_only):g} (the first stage also starts the run); the events' "
        f"notifications add {min(told):g}–{max(told):g}.",
        "",
        "- execute: `pipeline.execute` itself; claim: `runs.stage_claim` with its events; record:",
        "  `runs.stage_succeed` with its events; notifications: `projects.notifications` called on each",
        "  event's commit; work: the stage (none for architect..deployer; Notify is the real stage).",
        "- ms: wall time of one `pipeline.execute` in this process, median; SQL: the queries' own time.",
        "- latency: from the commit that submitted the batch to each run's `finished_at`.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chains", type=int, default=1000, help="raw Celery chains")
    parser.add_argument("--runs", type=int, default=200, help="engine runs submitted one by one")
    parser.add_argument("--batch", type=int, default=100, help="engine runs submitted at once")
    parser.add_argument(
        "--people", type=int, default=10, help="the runs are these many people's, in turn (RUNS_PER_PERSON each)"
    )
    parser.add_argument("--query-runs", type=int, default=3, help="runs driven in process to count queries")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/BENCHMARKS.md")
    parser.add_argument("--heading", default="Engine overhead and latency under load")
    args = parser.parse_args()
    global PEOPLE
    PEOPLE = args.people

    when = machine()
    home = Path(os.environ["FACTORY_HOME"])
    call_command("migrate", verbosity=0)
    Project.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    people = [user] + [get_user_model().objects.get_or_create(username=f"bench-{n}")[0] for n in range(1, args.people)]
    client = redis.Redis.from_url(REDIS_URL)
    client.flushdb()

    def redis_connections() -> int:
        return int(client.info("stats")["total_connections_received"])

    before = redis_connections()
    queries = count_queries(args.query_runs)
    events = RunEvent.objects.filter(run__project__description__startswith="bench queries").count()
    redis_per_event = (redis_connections() - before) / events if events else None
    client.flushdb()  # the in-process runs' start messages: nobody is to run them

    worker = Worker(home)
    try:
        meter = CpuMeter(worker)
        meter.start()
        raw = raw_celery(client, args.chains)
        raw["cpu_ms_per_task"] = meter.stop() * 1000 / raw["tasks"]
        print(f"raw: {raw['tasks_per_s']:.0f} tasks/s, {raw['cpu_ms_per_task']:.2f} CPU ms a task", flush=True)
        meter.start()
        engine = engine_runs(people, args.runs)
        engine["cpu_ms_per_task"] = meter.stop() * 1000 / (STAGES_PER_RUN * args.runs)
        print(
            f"engine: {engine['stage_tasks_per_s']:.0f} stage tasks/s, {engine['cpu_ms_per_task']:.2f} CPU ms a task",
            flush=True,
        )
        batch = engine_batch(people, args.batch)
    finally:
        worker.stop()
    body = report(queries, raw, engine, batch, redis_per_event, when, task_runtimes(worker.log))
    print(body)
    if args.write:
        write_section(args.heading, body)
        print("\nwritten to docs/BENCHMARKS.md")


if __name__ == "__main__":
    try:
        main()
    finally:
        if REDIS_PROC is not None:
            REDIS_PROC.terminate()
            REDIS_PROC.wait(timeout=10)
