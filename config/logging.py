"""Structured logs: key=value on a terminal, JSON in production.

Pipeline code binds ``run_id``, ``stage`` and ``task_id`` with structlog's contextvars, so every
line logged while a stage works carries them.

Every line, structlog's and the standard library's alike, passes through the secrets redaction
(``secrets_meta.redaction``): each string of the event is redacted before rendering, and the
rendered line once more (a traceback is only text once rendered).
"""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

import structlog

from secrets_meta.redaction import redact_event, redact_rendered


def configure_logging(*, json: bool, level: str, stream=None, file: str | None = None) -> None:
    """``stream``: where lines go (default: standard error at the time of the call). ``file``:
    also append every line, as JSON, to this file (LOG_FILE; several processes may share it)."""
    shared = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_event,
    ]
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    # JSON: a traceback becomes the "exception" field (and is redacted as one); the console
    # renderer formats tracebacks itself.
    tracebacks = [structlog.processors.format_exc_info, redact_event] if json else []
    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *tracebacks, renderer, redact_rendered],
        foreign_pre_chain=shared,
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(formatter)
    handlers: list[logging.Handler] = [handler]
    if file:
        # Appended (one write per line), reopened when logrotate moves it away.
        Path(file).parent.mkdir(parents=True, exist_ok=True)
        to_file = logging.handlers.WatchedFileHandler(file, encoding="utf-8")
        to_file.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info,
                    redact_event,
                    structlog.processors.JSONRenderer(),
                    redact_rendered,
                ],
                foreign_pre_chain=shared,
            )
        )
        handlers.append(to_file)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    logging.getLogger("django.db.backends").setLevel(logging.WARNING)
