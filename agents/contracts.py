"""What agents hand back, validated at the edge: an agent's words are untrusted input."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

# Free text from an agent: no NUL (PostgreSQL cannot store it; lone surrogates are refused as
# not being text at all).
TEXT = r"^[^\x00]*$"


class AgentResult(BaseModel):
    """The structured report a developer agent must leave when it stops."""

    model_config = ConfigDict(extra="forbid")
    status: Literal["complete", "blocked", "failed"]
    commit: str | None = Field(default=None, pattern=r"^[0-9a-f]{7,40}$")
    summary: str = Field(default="", max_length=4000, pattern=TEXT)
    question: str | None = Field(default=None, max_length=4000, pattern=TEXT)


class FailingTest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    message: str = Field(default="", max_length=2000)


class TestReport(BaseModel):
    """Parsed from the project's own pytest --junitxml output."""

    __test__ = False  # not a pytest test class
    model_config = ConfigDict(extra="forbid")
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    failing: list[FailingTest] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.passed > 0

    def summary(self) -> str:
        text = f"{self.passed} passed, {self.failed} failed, {self.errors} errors"
        if self.failing:
            text += ": " + "; ".join(f"{t.name}: {t.message}" for t in self.failing[:5])
        return text


class ProgressIn(BaseModel):
    """``orchestrator-cli progress "..."``: what the agent is doing, for the person to see."""

    model_config = ConfigDict(extra="forbid")
    message: str = Field(min_length=1, max_length=2000, pattern=TEXT)


class AskIn(BaseModel):
    """``orchestrator-cli ask "..."``: a question for a person."""

    model_config = ConfigDict(extra="forbid")
    question: str = Field(min_length=1, max_length=4000, pattern=TEXT)


def describe_errors(exc: ValidationError, *, root: str = "value") -> str:
    """A validation error as one line a person can act on: ``field: problem; ...``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or root}: {e['msg']}" for e in exc.errors())
