"""People in Telegram for these tests: a linked person, a stranger, the webhook as Telegram calls it,
and the outbox delivered the way the ``notify.send_message`` task delivers it."""

from __future__ import annotations

import json

import pytest

from orchestrator.telegram import delivery
from projects import people
from projects.models import OutboundMessage
from tests.fakes.telegram_server import user as tg_user

ADA_TG = 4242
BOB_TG = 5151
STRANGER_TG = 777001


@pytest.fixture
def ada_tg() -> dict:
    return tg_user(ADA_TG, first_name="Ada", username="ada_l")


@pytest.fixture
def stranger_tg() -> dict:
    return tg_user(STRANGER_TG, first_name="Eve", username="eve")


@pytest.fixture
def ada(user, ada_tg):
    """The user ``ada`` linked to Telegram user 4242, whose private chat is 4242."""
    people.account_link(user=user, telegram_user_id=ada_tg["id"], chat_id=ada_tg["id"], username="ada_l")
    return user


def deliver_outbox() -> None:
    """Deliver every queued message, as the notify task does (for tests without a Celery worker:
    their transaction is never committed, so no task is enqueued)."""
    for message_id in OutboundMessage.objects.filter(status="pending").values_list("id", flat=True):
        delivery.message_send(message_id=message_id)


def post_update(
    client, update, *, secret: str | None = "webhook-secret-for-tests", raw: bytes | None = None, deliver: bool = True
):
    """Deliver an update to the webhook the way Telegram does; then (``deliver``) send the answers
    it queued, as the notify task would."""
    headers = {} if secret is None else {"HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN": secret}
    body = raw if raw is not None else json.dumps(update)
    response = client.post("/telegram/webhook/", data=body, content_type="application/json", **headers)
    if deliver:
        deliver_outbox()
    return response


@pytest.fixture
def botapi(settings):
    """The product's Bot API stand-in serving the factory's own bot (``botapi.factory``) and any
    bot a test adds: the factory and the people's bots talk to one server, as in production."""
    from orchestrator.telegram.standin import StandIn

    server = StandIn().start()
    server.factory = server.add_bot("factory_test_bot")
    settings.TELEGRAM_API_URL = server.api_url
    settings.TELEGRAM_BOT_TOKEN = server.factory
    settings.TELEGRAM_WEBHOOK_SECRET = "webhook-secret-for-tests"
    yield server
    server.stop()
