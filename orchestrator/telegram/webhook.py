"""``POST /telegram/webhook/``: Telegram delivers updates here in webhook mode.

The call must carry ``X-Telegram-Bot-Api-Secret-Token`` equal to TELEGRAM_WEBHOOK_SECRET
(compared in constant time); without a configured secret every call is refused. A refused call
is answered 403 and nothing in it is read. An accepted update goes to the same handlers as long
polling (``orchestrator.telegram.handlers.handle_update``), which validate it first. The answers
go to the outbox, so this view never waits for Telegram.
"""

from __future__ import annotations

import hmac
import json

import structlog
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from orchestrator.telegram import handlers

log = structlog.get_logger(__name__)
SECRET_HEADER = "X-Telegram-Bot-Api-Secret-Token"


def secret_ok(given: str | None) -> bool:
    expected = settings.TELEGRAM_WEBHOOK_SECRET
    if not expected or given is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


@csrf_exempt
@require_POST
def telegram_webhook(request: HttpRequest) -> JsonResponse:
    if not secret_ok(request.headers.get(SECRET_HEADER)):
        log.warning(
            "telegram_webhook_refused", reason="wrong or missing secret token", remote=request.META.get("REMOTE_ADDR")
        )
        return JsonResponse({"ok": False, "error": "forbidden"}, status=403)
    try:
        raw = json.loads(request.body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deeply
        log.warning("telegram_update_rejected", errors=["the body is not JSON"])
        return JsonResponse({"ok": False, "error": "the body is not JSON"}, status=400)
    handled = handlers.handle_update(raw)
    # A malformed update is answered 200 too: Telegram would only send it again.
    return JsonResponse({"ok": True, "handled": handled})
