"""The Architect's output: what is to be built, validated before anything acts on it."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

ENV_NAME = r"^[A-Z_][A-Z0-9_]*$"
SLUG = r"^[a-z][a-z0-9-]{1,40}[a-z0-9]$"
# The file in every generated project that says how to start it (see StartSpec).
START_SPEC_FILE = "factory.json"


class EnvVar(BaseModel):
    """One variable of the env contract; values never appear here, only where they come from."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=ENV_NAME)
    # "bot_token": a telegram_bot's TELEGRAM_BOT_TOKEN, filled by the Deployer from the bot pool
    # or the person's own token.
    source: Literal["user_secret", "generated_secret", "derived", "literal", "bot_token"]
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


class ConversationCheck(BaseModel):
    """A check a live bot must pass: a person says ``send``, the bot's reply contains ``expect_contains``."""

    model_config = ConfigDict(extra="forbid")
    name: str
    send: str = Field(min_length=1, max_length=4096)  # what a user says, e.g. "/hello Ada"
    expect_contains: str = Field(min_length=1)  # e.g. "Hello, Ada!"


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
    # A telegram_bot's checks (it has no HTTP acceptance checks beyond its /health).
    conversation: list[ConversationCheck] = Field(default_factory=list)


class StartSpec(BaseModel):
    """``factory.json`` in a project: how to start it and where its health check is.

    Parsed here only (``read_start_spec``): the Deployer starts releases from it, ``/status``
    probes the path it names."""

    model_config = ConfigDict(extra="ignore")
    start: list[str] = Field(min_length=1)
    health: str = Field(default="/health", pattern=r"^/")


class StartSpecError(Exception):
    """The project's factory.json is missing or not valid (the message says which)."""


def read_start_spec(project_dir: str | Path) -> StartSpec:
    try:
        return StartSpec.model_validate_json((Path(project_dir) / START_SPEC_FILE).read_text())
    except FileNotFoundError as exc:
        raise StartSpecError(f"The project has no {START_SPEC_FILE} saying how to start it.") from exc
    except ValidationError as exc:
        raise StartSpecError(f"{START_SPEC_FILE} is not valid: {exc.errors()[0]['msg']}") from exc
