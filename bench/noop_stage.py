"""Benchmark-only stage work (``BENCH_STAGE_MODULE=bench.noop_stage``, see bench/engine.py).

Every stage does nothing, so what is measured is the engine alone: the real claim, the real
record of the outcome, the real events. Notify is the real Notify stage: it reads and writes
only the database, and it is what ends a run.
"""

from __future__ import annotations

from orchestrator.stages import Outcome, StageContext, notify
from projects.models import Stage


def run(ctx: StageContext) -> Outcome:
    if ctx.stage_run.stage == Stage.NOTIFY:
        return notify.run(ctx)
    return Outcome({})
