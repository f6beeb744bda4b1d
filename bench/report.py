"""Shared by the benchmarks: percentiles, and replacing one section of docs/BENCHMARKS.md."""

from __future__ import annotations

import math
import os
import platform
import re
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH_FILE = ROOT / "docs" / "BENCHMARKS.md"


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (
        f"{date.today().isoformat()}, {os.cpu_count()} CPUs (shared with other work: load average {load} "
        f"at the start), {platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def load_now() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def write_section(heading: str, body: str) -> None:
    """Replace the section under ``## heading`` (up to the next ``## ``), or append it."""
    heading = f"## {heading}"
    section = f"{heading}\n\n{body.rstrip()}\n"
    text = BENCH_FILE.read_text() if BENCH_FILE.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(heading)}\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    BENCH_FILE.parent.mkdir(parents=True, exist_ok=True)
    BENCH_FILE.write_text(text)
