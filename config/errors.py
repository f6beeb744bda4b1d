"""One error family for the whole product, and the API's rendering of it.

Every error a person can see has a stable machine-readable ``code`` and a message written for a
person. The DRF handler renders ``{"error": {"code", "message", "extra"}}`` for all of them.
"""
from __future__ import annotations

from typing import Any

from django.core.exceptions import PermissionDenied
from django.http import Http404
from rest_framework import exceptions as drf_exceptions
from rest_framework.response import Response
from rest_framework.views import exception_handler


class AppError(Exception):
    """A refusal or failure with a code people and programs can rely on."""

    status_code = 400
    code = "error"

    def __init__(self, message: str, *, code: str | None = None, extra: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.extra = extra or {}


class ValidationFailed(AppError):
    code = "validation_error"


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class RateLimited(AppError):
    """Too many requests of one kind from one person; the message says when to try again."""

    status_code = 429
    code = "rate_limited"


class TransientError(AppError):
    """An outside service failed in a way that may pass: timeouts, 5xx, rate limits. Retry."""

    status_code = 503
    code = "transient"


class PermanentError(AppError):
    """An outside service or configuration refused for good. Fail with this message."""

    code = "permanent"


_DRF_CODES = {
    drf_exceptions.NotAuthenticated: "not_authenticated",
    drf_exceptions.AuthenticationFailed: "authentication_failed",
    drf_exceptions.PermissionDenied: "permission_denied",
    drf_exceptions.NotFound: "not_found",
    drf_exceptions.MethodNotAllowed: "method_not_allowed",
    drf_exceptions.ParseError: "parse_error",
    drf_exceptions.UnsupportedMediaType: "unsupported_media_type",
    drf_exceptions.Throttled: "throttled",
    drf_exceptions.ValidationError: "validation_error",
}


def api_exception_handler(exc: Exception, context: dict) -> Response | None:
    if isinstance(exc, AppError):
        return Response(
            {"error": {"code": exc.code, "message": exc.message, "extra": exc.extra}},
            status=exc.status_code,
        )
    if isinstance(exc, Http404):
        exc = drf_exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = drf_exceptions.PermissionDenied()
    response = exception_handler(exc, context)
    if response is None:
        return None
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    if isinstance(exc, drf_exceptions.ValidationError):
        message = "The request is not valid: " + _flatten(exc.detail)
        extra = {"fields": exc.detail}
    else:
        message = str(getattr(exc, "detail", exc))
        extra = {}
    response.data = {"error": {"code": code, "message": message, "extra": extra}}
    return response


def _flatten(detail: Any, prefix: str = "") -> str:
    if isinstance(detail, dict):
        return "; ".join(_flatten(v, f"{prefix}{k}: ") for k, v in detail.items())
    if isinstance(detail, list):
        return "; ".join(_flatten(v, prefix) for v in detail)
    return f"{prefix}{detail}"
