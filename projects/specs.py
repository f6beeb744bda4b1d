"""The Architect's output: what is to be built, validated before anything acts on it."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
SLUG = r"^[a-z][a-z0-9-]{1,40}[a-z0-9]$"


class EnvVar(BaseModel):
    """One variable of the env contract; values never appear here, only where they come from."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=ENV_NAME)
    source: Literal["user_secret", "generated_secret", "derived", "literal"]
    description: str = ""
    # Only for source == "literal".
    value: str | None = None


class AcceptanceCheck(BaseModel):
    """A check the deployed service must pass, e.g. GET /greet?name=Ada answers 200 with 'Ada'."""

    model_config = ConfigDict(extra="forbid")
    name: str
    method: Literal["GET", "POST"] = "GET"
    path: str = Field(pattern=r"^/")
    body: dict | None = None
    expect_status: int = 200
    expect_contains: str | None = None


class Feature(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    summary: str = ""
    params: dict = Field(default_factory=dict)


class ProjectSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=100)
    slug: str = Field(pattern=SLUG)
    kind: Literal["web_service", "telegram_bot"]
    summary: str = ""
    features: list[Feature] = Field(min_length=1)
    env: list[EnvVar] = Field(default_factory=list)
    acceptance: list[AcceptanceCheck] = Field(default_factory=list)
