"""Typed readers for settings that come from the environment.

Every setting is read once, in ``config/settings.py``. A value that cannot be parsed fails
loudly at start-up with the variable's name, instead of surfacing later as a strange error.
"""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":  # set but empty counts as unset
        if default is None:
            raise ImproperlyConfigured(f"The environment variable {name} is required.")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    lowered = raw.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), got {raw!r}.")


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be an integer, got {raw!r}.") from exc


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name} must be a number, got {raw!r}.") from exc


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_path(name: str, default: Path) -> Path:
    raw = os.environ.get(name)
    return Path(raw).expanduser().resolve() if raw else default


def bot_api_format(url: str) -> str:
    """A Bot API URL as telebot's ``API_URL`` wants it (``{0}`` the token, ``{1}`` the method).
    A base such as ``http://127.0.0.1:8081`` (a local Bot API server) gets ``/bot{0}/{1}``."""
    if "{0}" in url and "{1}" in url:
        return url
    if "{" in url or not url.startswith(("http://", "https://")):
        raise ImproperlyConfigured(
            f"TELEGRAM_API_URL={url!r}: give a base URL (https://api.telegram.org) or a format with {{0}} and {{1}}."
        )
    return url.rstrip("/") + "/bot{0}/{1}"
