"""A release's environment, built from the project's env contract: secret values come from the
store straight into the release's process environment, in memory only (never a file, a command
line, a prompt, a log line or an event). Used by the Deployer and by the release repair."""

from __future__ import annotations

from dataclasses import dataclass

from orchestrator import bots
from projects.models import Project
from projects.specs import ProjectSpec
from secrets_meta import redaction
from secrets_meta import services as secret_services


class ValuesMissing(Exception):
    """The release cannot start yet: a person must give these values (names only)."""

    def __init__(self, *, missing: list[str] | None = None, bot_reason: str | None = None):
        self.missing = missing or []
        self.bot_reason = bot_reason
        what = f"secrets {', '.join(self.missing)}" if self.missing else f"a bot token ({bot_reason})"
        super().__init__(f"The release needs {what}.")


@dataclass(frozen=True)
class ReleaseBot:
    username: str
    token: str


def project_bot(project: Project) -> ReleaseBot:
    """The bot a bot project runs as (its own, or one taken from the pool), or ValuesMissing."""
    bot = bots.bot_for_project(project_id=project.id)
    if bot is None:
        raise ValuesMissing(bot_reason="own_bot" if project.own_bot else "pool_empty")
    redaction.register("TELEGRAM_BOT_TOKEN", bot.token)
    return ReleaseBot(username=bot.username, token=bot.token)


def release_env(project: Project, spec: ProjectSpec, *, public_url: str, bot: ReleaseBot | None) -> dict[str, str]:
    """Every variable of the contract with its value, and every other secret the person set for
    the project; ValuesMissing when a user secret is not there yet. (The store registers every
    secret value it gives out for redaction.)"""
    computed = {"APP_NAME": spec.name, "PROJECT_SLUG": spec.slug, "PUBLIC_URL": public_url}
    if bot is not None:
        computed["BOT_USERNAME"] = bot.username
    resolved = secret_services.release_environment(project_id=project.id, env=spec.env, computed=computed)
    if resolved.missing:
        raise ValuesMissing(missing=list(resolved.missing))
    values = dict(resolved.values)
    if bot is not None:
        values["TELEGRAM_BOT_TOKEN"] = bot.token  # registered for redaction by project_bot
    return values
