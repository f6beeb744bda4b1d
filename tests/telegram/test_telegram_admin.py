"""Admin for people in Telegram: linking accounts, making invite codes, and the outbound messages."""

from __future__ import annotations

import pytest
from django.urls import reverse

from projects import notifications, people
from projects.models import Invite, OutboundMessage, TelegramAccount

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["telegramaccount", "invite", "outboundmessage"])
def test_changelist_and_change_pages_render(admin_client, ada, model):
    invite = people.invite_create()
    message = notifications.notify_person(user_id=ada.id, text="Run #1 started")
    obj = {"telegramaccount": TelegramAccount.objects.get(user=ada), "invite": invite, "outboundmessage": message}[
        model
    ]

    listing = admin_client.get(reverse(f"admin:projects_{model}_changelist"))
    change = admin_client.get(reverse(f"admin:projects_{model}_change", args=[obj.pk]))

    assert listing.status_code == 200 and change.status_code == 200
    if model == "invite":
        assert f"/start {invite.code}" in change.content.decode()


def test_an_operator_creates_an_invite_code_through_the_form(admin_client, admin_user, other_user):
    response = admin_client.post(
        reverse("admin:projects_invite_add"), {"user": other_user.id, "valid_for_days": 3}, follow=True
    )

    assert response.status_code == 200
    invite = Invite.objects.get()
    assert invite.user == other_user and invite.created_by == admin_user and len(invite.code) >= 16
    assert f"/start {invite.code}" in response.content.decode()


def test_an_operator_links_a_telegram_user(admin_client, other_user):
    response = admin_client.post(
        reverse("admin:projects_telegramaccount_add"),
        {"user": other_user.id, "telegram_user_id": 99001, "chat_id": 99001, "username": "bob_b"},
        follow=True,
    )

    assert response.status_code == 200
    account = TelegramAccount.objects.get(telegram_user_id=99001)
    assert (account.user, account.chat_id) == (other_user, 99001)


def test_linking_a_telegram_id_twice_is_refused_by_the_form(admin_client, ada, other_user):
    response = admin_client.post(
        reverse("admin:projects_telegramaccount_add"),
        {"user": other_user.id, "telegram_user_id": 4242, "username": "x"},
    )

    assert response.status_code == 200  # the form again, with the error
    assert TelegramAccount.objects.count() == 1


def test_resend_queues_failed_messages_only(admin_client, ada, django_capture_on_commit_callbacks):
    failed = notifications.notify_person(user_id=ada.id, text="one")
    sent = notifications.notify_person(user_id=ada.id, text="two")
    notifications.message_mark_failed(message_id=failed.id, error="502")
    notifications.message_mark_sent(message_id=sent.id, telegram_message_id=7)

    with django_capture_on_commit_callbacks() as callbacks:
        admin_client.post(
            reverse("admin:projects_outboundmessage_changelist"),
            {"action": "resend", "_selected_action": [failed.id, sent.id]},
        )

    assert len(callbacks) == 1
    assert OutboundMessage.objects.get(id=failed.id).status == "pending"
    assert OutboundMessage.objects.get(id=sent.id).status == "sent"
