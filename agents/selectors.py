"""Reads over the ledger and worker sessions."""
from __future__ import annotations

from dataclasses import dataclass

from django.db.models import Q, Sum

from agents.models import Usage


@dataclass(frozen=True)
class Spend:
    run: float
    project: float
    stage: float


def spend(*, run_id: int, project_id: int, stage_run_id: int) -> Spend:
    """Dollars spent so far by a run, its project and one stage run, in one query."""
    totals = Usage.objects.filter(project_id=project_id).aggregate(
        project=Sum("cost_usd"),
        run=Sum("cost_usd", filter=Q(stage_run__run_id=run_id)),
        stage=Sum("cost_usd", filter=Q(stage_run_id=stage_run_id)),
    )
    return Spend(**{k: float(v or 0) for k, v in totals.items()})
