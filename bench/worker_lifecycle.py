"""Worker life-cycle latency: create, first exec, pause, unpause, terminate, per runtime.

Runs N rounds (default 20) against the real runtimes on this machine, the process runtime and the
Docker runtime in the same run, and prints a markdown table of the median and 95th percentile
(nearest rank) of each step, in milliseconds. One untimed round per runtime warms it up first.

    .venv/bin/python bench/worker_lifecycle.py            # print the table
    .venv/bin/python bench/worker_lifecycle.py --write    # and put it in docs/BENCHMARKS.md

The Docker runtime needs an engine (scripts/dockerd) and WORKER_IMAGE (default the test image,
scripts/worker-image); without an engine its row says so. --write replaces only the
"Worker lifecycle" section of docs/BENCHMARKS.md, creating the file if it is missing.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="factory-bench-"))
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from config.errors import AppError  # noqa: E402
from orchestrator.runtime import get_runtime  # noqa: E402
from orchestrator.runtime.base import SESSION_MARKER, WorkerRuntime, WorkerSpec  # noqa: E402

STEPS = ("create", "first exec", "pause", "unpause", "terminate")
HEADING = "## Worker lifecycle"
BENCH_FILE = ROOT / "docs" / "BENCHMARKS.md"


def timed(fn: Callable[[], object]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000


def one_round(rt: WorkerRuntime, workspace: Path, session_id: int) -> dict[str, float]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workspace), SESSION_MARKER: str(session_id)}
    spec = WorkerSpec(session_id=session_id, workspace=workspace, env=env, labels={"factory.bench": "lifecycle"})
    handle = ""

    def create() -> None:
        nonlocal handle
        handle = rt.create(spec)

    times = {"create": timed(create)}
    try:
        times["first exec"] = timed(lambda: _check(rt.exec(handle, ["true"], cwd=workspace, env=env, timeout=30)))
        times["pause"] = timed(lambda: rt.pause(handle))
        times["unpause"] = timed(lambda: rt.unpause(handle))
    finally:
        times["terminate"] = timed(lambda: rt.terminate(handle))
    return times


def _check(result) -> None:
    if not result.ok:
        raise RuntimeError(f"`true` failed in the worker: {result.exit_code} {result.stderr.strip()}")


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(0.95 * len(ordered)) - 1]


def measure(name: str, runs: int, scratch: Path) -> dict[str, list[float]] | str:
    """Samples per step, or why this runtime could not be measured here."""
    rt = get_runtime(name)
    samples: dict[str, list[float]] = {step: [] for step in STEPS}
    try:
        one_round(rt, scratch / f"{name}-warmup", 990_000)
        for i in range(runs):
            for step, ms in one_round(rt, scratch / f"{name}-{i}", 990_001 + i).items():
                samples[step].append(ms)
    except AppError as exc:
        return f"not measured: {exc.message}"
    return samples


def table(results: dict[str, dict[str, list[float]] | str], runs: int) -> str:
    lines = [
        f"Median / p95 in ms over {runs} runs (after one warm-up run), measured {date.today().isoformat()} "
        f"on {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}; "
        f"docker image `{settings.WORKER_IMAGE}`, network mode `{settings.WORKER_NETWORK_MODE}`. "
        f"Produced by `bench/worker_lifecycle.py`.",
        "",
        "| runtime | " + " | ".join(STEPS) + " |",
        "|---|" + "---|" * len(STEPS),
    ]
    for name, samples in results.items():
        if isinstance(samples, str):
            lines.append(f"| {name} | {samples} |" + " |" * (len(STEPS) - 1))
            continue
        cells = [f"{statistics.median(samples[s]):.2f} / {p95(samples[s]):.2f}" for s in STEPS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "- create: the runtime's `create()` (process: fork/exec of the holder; docker: create + start of",
        "  the container). first exec: `true` run in the new worker and waited for. pause / unpause:",
        "  SIGSTOP / SIGCONT to the process group, or the cgroup freezer. terminate: kill and reap, or",
        "  `remove(force=True)`.",
    ]
    return "\n".join(lines)


def write_section(body: str) -> None:
    section = f"{HEADING}\n\n{body}\n"
    text = BENCH_FILE.read_text() if BENCH_FILE.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(HEADING)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCH_FILE.parent.mkdir(parents=True, exist_ok=True)
    BENCH_FILE.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", "--runs", type=int, default=20)
    parser.add_argument("--runtimes", default="process,docker", help="comma-separated runtime names")
    parser.add_argument("--write", action="store_true", help=f"write the table into {BENCH_FILE.relative_to(ROOT)}")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="factory-bench-ws-"))
    results = {name: measure(name, args.runs, scratch) for name in args.runtimes.split(",")}
    body = table(results, args.runs)
    print(body)
    if args.write:
        write_section(body)
        print(f"\nwritten to {BENCH_FILE.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
