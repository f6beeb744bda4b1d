"""Redaction: every known secret value is replaced by ``[secret:NAME]`` in logs and in what
agents say (defense in depth: values are never meant to reach either).

A process-wide registry maps each known value to its name. It is filled whenever a value passes
through a store (``put`` and ``get`` register it), by the Deployer and the bot code through
``register``, and by ``load_project`` before anything an agent wrote about a project is stored
(a fresh process knows no values until then). Values shorter than ``MIN_LENGTH`` characters are
not redacted: replacing every "abc" in every log line would hide more than it protects.

This module is imported by the logging configuration, before Django's apps are loaded: it
imports no model at module level.
"""

from __future__ import annotations

import re
import threading
from typing import Any

import structlog

log = structlog.get_logger(__name__)

MIN_LENGTH = 6

_lock = threading.Lock()
_known: dict[str, str] = {}  # value -> name
# The compiled pattern with the mapping it was built from (replaced, never mutated).
_compiled: tuple[re.Pattern[str], dict[str, str]] | None = None
# project id -> the stores' version marker when its values were last loaded in this process.
_loaded: dict[int, str] = {}


def register(name: str, value: str | None) -> None:
    """From now on, ``value`` is shown as ``[secret:name]`` in logs and agent transcripts."""
    global _compiled
    if not isinstance(value, str) or len(value) < MIN_LENGTH:
        return
    with _lock:
        if _known.get(value) == name:
            return
        _known[value] = name
        _compiled = None


def _pattern() -> tuple[re.Pattern[str], dict[str, str]] | None:
    global _compiled
    compiled = _compiled
    if compiled is not None:
        return compiled
    with _lock:
        if not _known:
            return None
        mapping = dict(_known)
        # Longest first: of two values where one contains the other, the longer one wins.
        alternatives = sorted(mapping, key=len, reverse=True)
        compiled = (re.compile("|".join(re.escape(v) for v in alternatives)), mapping)
        _compiled = compiled
        return compiled


def redact(text: str) -> str:
    """``text`` with every known secret value replaced by ``[secret:NAME]``."""
    if not text or not isinstance(text, str) or not _known:
        return text
    compiled = _pattern()
    if compiled is None:
        return text
    pattern, mapping = compiled
    return pattern.sub(lambda m: f"[secret:{mapping[m.group(0)]}]", text)


def redact_data(data: Any) -> Any:
    """Every string inside ``data`` (dicts, lists, tuples, pydantic-free JSON-like values) redacted;
    anything else is returned as it is."""
    if not _known:
        return data
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {key: redact_data(value) for key, value in data.items()}
    if isinstance(data, list):
        return [redact_data(value) for value in data]
    if isinstance(data, tuple):
        return tuple(redact_data(value) for value in data)
    return data


def load_project(project_id: int | None) -> None:
    """Make this process know the project's secret values and its bots' tokens, so what is
    stored about the project next is redacted even in a process that never read them.

    The store is read again only when its version marker for the project changed (one cheap
    query per call otherwise); values that were known stay known.
    """
    if project_id is None:
        return
    # Here, not at the top: the logging configuration imports this module before apps load.
    from secrets_meta.models import BotToken
    from secrets_meta.stores import BOTS_SCOPE, SecretStoreError, get_store, project_scope

    store = get_store()
    if not store.readable:
        return
    scope = project_scope(project_id)
    bots = list(BotToken.objects.filter(project_id=project_id).values_list("bot_id", "updated_at"))
    marker = f"{store.version(scope)}|{bots}"
    if _loaded.get(project_id) == marker:
        return
    wanted = [(scope, name) for name in store.names(scope)] + [(BOTS_SCOPE, str(bot_id)) for bot_id, _ in bots]
    for where, name in wanted:
        try:
            store.get(where, name)  # a store registers every value it reads
        except SecretStoreError as exc:  # nobody can read it, so nothing can leak it either
            log.warning("redaction_value_unreadable", scope=where, name=name, error=exc.code)
    _loaded[project_id] = marker


def load_run(run_id: int | None) -> None:
    """``load_project`` for the project of a run."""
    if run_id is None:
        return
    from projects.models import PipelineRun  # see load_project

    load_project(PipelineRun.objects.filter(id=run_id).values_list("project_id", flat=True).first())


def forget_all() -> None:
    """Tests only: start from an empty registry."""
    global _compiled
    with _lock:
        _known.clear()
        _loaded.clear()
        _compiled = None


# --- logging --------------------------------------------------------------------------------
def redact_event(logger, method_name: str, event_dict: dict) -> dict:
    """structlog processor: every string in the event dict (nested too) redacted. Installed in
    the structlog chain and in the stdlib records' ``foreign_pre_chain`` (config/logging.py)."""
    if not _known:
        return event_dict
    return {key: redact_data(value) for key, value in event_dict.items()}


def redact_rendered(logger, method_name: str, rendered: Any) -> Any:
    """structlog processor placed after the renderer: the rendered line redacted once more, for
    what only rendering adds (an exception's traceback, a value's repr)."""
    return redact(rendered) if isinstance(rendered, str) else rendered
