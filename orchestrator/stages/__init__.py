"""One module per pipeline stage. Each exposes ``run(ctx) -> Outcome`` and raises StageFailed."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from config.errors import AppError
from projects.models import PipelineRun, Project, StageRun


class Next(enum.Enum):
    CONTINUE = "continue"  # go on down the chain
    LOOP = "loop"  # back to the Developer for another iteration
    WAIT = "wait"  # no worker capacity: retry this stage later


@dataclass
class Outcome:
    output: dict[str, Any] = field(default_factory=dict)
    next: Next = Next.CONTINUE


class StageWait(AppError):
    """Not a failure: something the stage needs is busy (another deploy of the project); the
    claim is given back and the stage retries later, like a full worker quota."""

    code = "stage_wait"


class StageFailed(AppError):
    """The stage cannot succeed; the run fails with this code and message."""

    code = "stage_failed"

    def __init__(self, message: str, *, code: str | None = None, output: dict | None = None):
        super().__init__(message, code=code)
        self.output = output


@dataclass
class StageContext:
    run: PipelineRun
    stage_run: StageRun
    project: Project
    task_id: str = ""

    def output_of(self, stage: str, iteration: int | None = None) -> dict[str, Any]:
        """The recorded output of an earlier stage of this run."""
        qs = StageRun.objects.filter(run=self.run, stage=stage, status=StageRun.Status.SUCCEEDED)
        if iteration is not None:
            qs = qs.filter(iteration=iteration)
        row = qs.order_by("-iteration").first()
        if row is None or row.output is None:
            raise StageFailed(f"The {stage} stage has no recorded output for this run.", code="missing_output")
        return row.output
