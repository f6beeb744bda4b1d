"""Every task the product sends by name, and every beat entry, is a task a worker has registered.

A name is sent by name when a domain app enqueues engine work (``send_task``, admin actions,
``on_commit`` enqueues): a typo there would be silently dropped by the broker. The source scan
catches literal names that bypass ``config.task_names``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from config import task_names
from config.celery import app
from orchestrator.schedule import EXPIRY_FACTOR, beat_schedule

ROOT = Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("agents", "config", "orchestrator", "projects", "secrets_meta")
TASK_NAME = re.compile(r"^(pipeline|workers|maintenance|notify|escalations)\.[a-z_]+$")


def registered() -> set[str]:
    app.loader.import_default_modules()
    return {name for name in app.tasks if not name.startswith("celery.")}


def test_every_task_name_constant_is_a_registered_task():
    names = {v for k, v in vars(task_names).items() if k.isupper() and isinstance(v, str)}
    assert names, "config.task_names defines no names"
    assert names - registered() == set()


def test_every_beat_entry_runs_a_registered_task_and_expires_after_one_and_a_half_intervals():
    tasks = registered()
    for name, entry in beat_schedule().items():
        assert entry["task"] in tasks, name
        assert entry["options"]["expires"] == entry["schedule"] * EXPIRY_FACTOR == entry["schedule"] * 1.5


def test_no_task_name_is_spelled_outside_the_constants():
    """Literal task names in the source must be the registered ones (and should be constants)."""
    tasks, stray = registered(), []
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if "migrations" in path.parts or path.name == "task_names.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and TASK_NAME.match(node.value):
                    stray.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    unknown = [s for s in stray if s.rsplit("'", 2)[-2] not in tasks]
    assert unknown == [], "task names that no worker registers"
    assert stray == [], "use config.task_names instead of literal task names"
