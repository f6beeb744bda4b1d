"""Cost of one worker-lifecycle beat sweep (pause_idle + reap) over many WorkerSession rows.

    .venv/bin/python bench/beat_sweep.py [--rows 10000] [--write]

Runs against DATABASE_URL (PostgreSQL if set, else a fresh SQLite file in a temporary
FACTORY_HOME), migrates, then measures the sweep over a baseline of 100 rows and over --rows
rows, in the same process: queries issued and wall milliseconds (median of 5 sweeps). Two
shapes: history (almost every row terminated, 10 live workers with real process groups) and
all-live (every row a live session owned by another node, so the sweep must read them all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("FACTORY_HOME", tempfile.mkdtemp(prefix="bench-sweep-"))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")
os.environ.setdefault("MAX_WORKERS", "100")

import django  # noqa: E402

django.setup()

from django.contrib.auth import get_user_model  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from agents.models import WorkerSession  # noqa: E402
from orchestrator import maintenance, workers  # noqa: E402
from projects.models import PipelineRun, Project  # noqa: E402


def setup_rows(n: int, shape: str) -> list[Project]:
    WorkerSession.objects.all().delete()
    user, _ = get_user_model().objects.get_or_create(username="bench")
    projects = [Project.objects.create(owner=user, description=f"bench {shape} {i}") for i in range(10)]
    now = timezone.now()
    rows = []
    for i in range(n - (10 if shape == "history" else 0)):
        project = Project(id=projects[i % 10].id)
        if shape == "history":
            rows.append(
                WorkerSession(
                    project=project,
                    role="developer",
                    runtime="process",
                    container_id=str(10**7 + i),
                    state="terminated",
                    owner_node="bench@here",
                    last_activity_at=now,
                    state_changed_at=now,
                )
            )
        else:  # live sessions owned by another node: read by the sweep, acted on by none of its checks
            rows.append(
                WorkerSession(
                    project=project,
                    role=["architect", "developer", "tester"][i % 3],
                    runtime="process",
                    container_id=str(10**7 + i),
                    state="paused",
                    owner_node="other@elsewhere",
                    last_activity_at=now,
                    state_changed_at=now,
                )
            )
    # The partial unique constraint allows one live session per project and role: spread the
    # all-live rows over enough projects.
    if shape == "live":
        extra = [Project.objects.create(owner=user, description=f"bench live p{i}") for i in range(n // 3 + 1)]
        for i, row in enumerate(rows):
            row.project = extra[i // 3]
            row.role = ["architect", "developer", "tester"][i % 3]
    WorkerSession.objects.bulk_create(rows, batch_size=2000)
    if shape == "history":
        for project in projects:
            run = PipelineRun.objects.create(project=project)
            workers.session_acquire(project_id=project.id, run_id=run.id, role="developer")
    return projects


def sweep_once() -> tuple[int, float]:
    with CaptureQueriesContext(connection) as queries:
        started = time.perf_counter()
        maintenance.workers_pause_idle()
        report = maintenance.workers_reap()
        elapsed = (time.perf_counter() - started) * 1000
    assert report.total() == 0, report  # steady state: nothing to do, only to look
    return len(queries), elapsed


def measure(n: int, shape: str) -> tuple[int, float]:
    projects = setup_rows(n, shape)
    results = [sweep_once() for _ in range(5)]
    for project in projects:
        maintenance.project_teardown(project_id=project.id)
    return results[0][0], statistics.median(r[1] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    call_command("migrate", verbosity=0)
    lines = [
        f"Database: {connection.vendor}. One sweep = `workers.pause_idle` + `workers.reap`, median of 5.",
        "",
        "| shape | rows | queries | ms | ms ratio vs 100 rows |",
        "|---|---|---|---|---|",
    ]
    for shape in ("history", "live"):
        base_q, base_ms = measure(100, shape)
        q, ms = measure(args.rows, shape)
        lines.append(f"| {shape} | 100 | {base_q} | {base_ms:.1f} | 1.0 |")
        lines.append(f"| {shape} | {args.rows} | {q} | {ms:.1f} | {ms / base_ms:.1f} |")
    table = "\n".join(lines)
    print(table)
    if args.write:
        write_section(
            ROOT / "docs" / "BENCHMARKS.md", f"Beat sweep over WorkerSession rows ({connection.vendor})", table
        )


def write_section(path: Path, heading: str, body: str) -> None:
    """Replace (or append) one '## heading' section of the benchmarks page."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = f"## {heading}\n"
    section = f"{marker}\n{body}\n"
    if marker in text:
        start = text.index(marker)
        end = text.find("\n## ", start + len(marker))
        text = text[:start] + section + (text[end + 1 :] if end != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


if __name__ == "__main__":
    main()
