"""People in Telegram for these tests: a linked person, a stranger, and the webhook as Telegram calls it."""
from __future__ import annotations

import json

import pytest

from projects import people
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


def post_update(client, update, *, secret: str | None = "webhook-secret-for-tests", raw: bytes | None = None):
    """Deliver an update to the webhook the way Telegram does."""
    headers = {} if secret is None else {"HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN": secret}
    body = raw if raw is not None else json.dumps(update)
    return client.post("/telegram/webhook/", data=body, content_type="application/json", **headers)
