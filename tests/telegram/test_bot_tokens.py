"""Bot tokens end to end against the product's Bot API stand-in: the validation chain (each
refusal its own code and message), the pool (add, release, revalidate, retire), ``manage.py
bots``, Admin → Tokens, and the intake in the factory's chat (the message deleted, the bot's
username answered, the token stored nowhere in plain text)."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from agents import services as agent_services
from agents.models import Escalation
from orchestrator import bots
from orchestrator.telegram import delivery
from projects import notifications, runs, services
from projects.models import OutboundMessage, Project, RunEvent
from secrets_meta.models import BotToken, SecretAudit, SecretValue
from secrets_meta.stores import BOTS_SCOPE, get_store
from tests.conftest import rendered_logs
from tests.telegram.conftest import ADA_TG, deliver_outbox, post_update

pytestmark = pytest.mark.django_db

DICE = "a telegram bot that rolls dice"


def project_of(user, *, own_bot=False) -> Project:
    project, _ = services.project_create(owner=user, description=DICE, own_bot=own_bot)
    return project


def nowhere_in_plain_text(token: str) -> None:
    """The token is in no row of ours but the vault's ciphertext (which does not hold it either)."""
    assert not OutboundMessage.objects.filter(text__contains=token).exists()
    assert not Escalation.objects.filter(answer__contains=token).exists()
    assert token not in str(list(Escalation.objects.values_list("context", flat=True)))
    assert token not in str(list(RunEvent.objects.values_list("payload", flat=True)))
    assert not SecretAudit.objects.filter(detail__contains=token).exists()
    assert not Project.objects.filter(description__contains=token).exists()
    assert token not in str(list(BotToken.objects.values()))
    assert not SecretValue.objects.filter(ciphertext__contains=token).exists()


# --- the validation chain ---------------------------------------------------------------------------
def test_a_good_token_gives_the_bots_identity(botapi):
    token = botapi.add_bot("dice_42_bot")

    identity = bots.validate_token(token)

    assert (identity.id, identity.username) == (int(token.split(":")[0]), "dice_42_bot")
    assert botapi.pending(token) == 0 and botapi.calls(token, "getUpdates") == [("getUpdates", 200)]


@pytest.mark.parametrize(
    "bad", ["", "hello", "123456:short", "abc:" + "x" * 35, "123456:" + "x" * 34, "123456:" + "x" * 30 + "!!!!!"]
)
def test_a_malformed_token_is_refused_before_telegram_is_asked(botapi, bad):
    with pytest.raises(bots.BotTokenRefused) as caught:
        bots.validate_token(bad)

    assert caught.value.code == "bot_token_format" and "That is not a bot token" in caught.value.message
    assert botapi.calls(botapi.factory) == []


def test_each_refusal_has_its_own_code_and_message_and_never_the_token(botapi, user):
    unknown = "123456789:" + "A" * 35
    hooked, polled, taken = botapi.add_bot("hooked_bot"), botapi.add_bot("polled_bot"), botapi.add_bot("taken_bot")
    botapi.set_webhook(hooked, "https://elsewhere.example/bot/" + hooked)
    botapi.start_foreign_poller(polled)
    project = project_of(user, own_bot=True)
    bots.own_token_intake(project.id, taken, actor="test")

    refusals = {}
    for token in (unknown, hooked, polled, taken):
        with pytest.raises(bots.BotTokenRefused) as caught:
            bots.validate_token(token)
        refusals[caught.value.code] = caught.value.message
        assert token not in caught.value.message and token not in str(caught.value.extra)

    assert set(refusals) == {"bot_token_rejected", "bot_token_webhook", "bot_token_polled", "bot_token_in_use"}
    assert "the token is wrong or revoked" in refusals["bot_token_rejected"]
    assert (
        "a webhook is set" in refusals["bot_token_webhook"].lower()
        and "in use elsewhere" in refusals["bot_token_webhook"]
    )
    assert "elsewhere.example" not in refusals["bot_token_webhook"]
    assert "Another program polls @polled_bot" in refusals["bot_token_polled"]
    assert "@taken_bot already serves another project here" in refusals["bot_token_in_use"]
    # The project's own bot is not "in use" for that project.
    assert bots.validate_token(taken, project_id=project.id).username == "taken_bot"


def test_telegram_unreachable_is_transient_not_a_refusal(settings):
    settings.TELEGRAM_API_URL = "http://127.0.0.1:9/bot{0}/{1}"
    from config.errors import TransientError

    with pytest.raises(TransientError) as caught:
        bots.validate_token("123456789:" + "A" * 35)
    assert caught.value.code == "bot_token_unchecked"


# --- the pool -------------------------------------------------------------------------------------------
def test_pool_add_stores_the_token_in_the_vault_and_the_bot_is_handed_to_a_project(botapi, user):
    token = botapi.add_bot("pool_1_bot")

    row = bots.pool_add(token, actor="test")
    project = project_of(user)
    got = bots.bot_for_project(project.id)

    assert (row.status, row.source, row.token_length) == ("free", "pool", len(token))
    assert get_store().get(BOTS_SCOPE, row.store_name) == token
    assert got is not None and got.row.id == row.id and got.token == token and got.username == "pool_1_bot"
    again_row, again_token = bots.bot_for_project(project.id)  # the assigned one, unpacked
    assert (again_row.id, again_token) == (row.id, token)
    assert list(SecretAudit.objects.filter(bot_token=row).values_list("action", flat=True)) == ["assigned", "added"]
    nowhere_in_plain_text(token)


def test_an_own_bot_project_gets_no_pool_bot_and_an_empty_pool_gives_none(botapi, user):
    bots.pool_add(botapi.add_bot(), actor="test")
    own = project_of(user, own_bot=True)

    assert bots.bot_for_project(own.id) is None
    assert bots.bot_for_project(project_of(user).id) is not None
    assert bots.bot_for_project(project_of(user).id) is None  # the pool is empty now


def test_release_deletes_the_webhook_clears_commands_and_frees_the_pool_bot(botapi, user):
    token = botapi.add_bot("released_bot")
    row = bots.pool_add(token, actor="test")
    project = project_of(user)
    bots.bot_for_project(project.id)
    botapi.set_webhook(token, "https://old-release.example/hook")
    from telebot import apihelper

    apihelper.API_URL = botapi.api_url
    apihelper.set_my_commands(token, [])  # set by the release: cleared at release
    botapi._bots[token].commands = [{"command": "roll", "description": "a die"}]

    released = bots.bot_release(project.id)

    assert released.id == row.id and (released.status, released.project_id) == ("free", None)
    assert botapi.webhook(token) == "" and botapi.commands(token) == []
    assert bots.bot_release(project.id) is None  # nothing assigned any more: a no-op


def test_releasing_a_persons_own_bot_retires_it_and_forgets_the_token(botapi, user):
    token = botapi.add_bot("own_bot")
    project = project_of(user, own_bot=True)
    row = bots.own_token_intake(project.id, token, actor="test")

    released = bots.bot_release(project.id)

    assert released.id == row.id and released.status == "retired" and released.source == "user"
    assert get_store().get(BOTS_SCOPE, row.store_name) is None


def test_a_bot_telegram_no_longer_accepts_is_released_as_invalid(botapi, user):
    token = botapi.add_bot()
    bots.pool_add(token, actor="test")
    project = project_of(user)
    bots.bot_for_project(project.id)
    botapi.revoke(token)

    released = bots.bot_release(project.id)

    assert released.status == "invalid" and "could not clear the bot" in released.last_error


def test_revalidate_marks_a_revoked_bot_invalid_and_a_healed_one_free(botapi):
    token = botapi.add_bot("flaky_bot")
    row = bots.pool_add(token, actor="test")
    botapi.start_foreign_poller(token)

    refused = bots.revalidate(row.id)
    botapi.stop_foreign_poller(token)
    healed = bots.revalidate(row.id)

    assert refused.status == "invalid" and "Another program polls" in refused.last_error
    assert healed.status == "free" and healed.last_error == ""


# --- manage.py bots -------------------------------------------------------------------------------------
def test_bots_add_reports_each_token_by_username_or_error_and_never_echoes_it(botapi):
    good, hooked = botapi.add_bot("cli_good_bot"), botapi.add_bot("cli_hooked_bot")
    botapi.set_webhook(hooked, "https://x.example/")
    bad = "123:" + "z" * 35
    out = io.StringIO()

    call_command("bots", "add", good, hooked, bad, "nonsense", stdout=out)
    call_command("bots", "list", stdout=out)

    text = out.getvalue()
    assert "token 1: @cli_good_bot added to the pool" in text
    assert "token 2: refused (bot_token_webhook)" in text
    assert "token 3: refused (bot_token_rejected)" in text and "token 4: refused (bot_token_format)" in text
    assert "1 of 4 token(s) added." in text and "@cli_good_bot free (pool)" in text
    for token in (good, hooked, bad):
        assert token not in text
    assert list(BotToken.objects.values_list("username", flat=True)) == ["cli_good_bot"]
    with pytest.raises(CommandError, match="No token was added"):
        call_command("bots", "add", bad, stdout=io.StringIO())


# --- Admin → Tokens -------------------------------------------------------------------------------------
def test_admin_adds_a_validated_token_and_never_shows_it_back(admin_client, botapi):
    token = botapi.add_bot("admin_added_bot")

    page = admin_client.get(reverse("admin:secrets_meta_bottoken_add"))
    response = admin_client.post(reverse("admin:secrets_meta_bottoken_add"), {"token": token}, follow=True)
    listing = admin_client.get(reverse("admin:secrets_meta_bottoken_changelist"))

    assert page.status_code == 200 and response.status_code == 200
    row = BotToken.objects.get()
    assert (row.username, row.status, row.created_by) == ("admin_added_bot", "free", f"user:{row.created_by[5:]}")
    assert token not in response.content.decode() and token not in listing.content.decode()
    assert "admin_added_bot" in listing.content.decode()
    change = admin_client.get(reverse("admin:secrets_meta_bottoken_change", args=[row.id]))
    assert change.status_code == 200 and token not in change.content.decode()


def test_admin_refuses_a_bad_token_with_the_chains_message(admin_client, botapi):
    token = botapi.add_bot("busy_bot")
    botapi.start_foreign_poller(token)

    response = admin_client.post(reverse("admin:secrets_meta_bottoken_add"), {"token": token})

    assert response.status_code == 200 and "Another program polls @busy_bot" in response.content.decode()
    assert token not in response.content.decode()
    assert not BotToken.objects.exists()


def test_admin_actions_revalidate_release_and_retire(admin_client, botapi, user):
    revoked, assigned = botapi.add_bot("revoked_bot"), botapi.add_bot("assigned_bot")
    first = bots.pool_add(revoked, actor="test")
    project = project_of(user)
    second = bots.pool_add(assigned, actor="test")
    BotToken.objects.filter(id=first.id).update(status="retired")  # keep the pool to one bot for the project
    bots.bot_for_project(project.id)
    BotToken.objects.filter(id=first.id).update(status="free")
    botapi.revoke(revoked)
    url = reverse("admin:secrets_meta_bottoken_changelist")

    revalidated = admin_client.post(url, {"action": "revalidate", "_selected_action": [first.id]}, follow=True)
    released = admin_client.post(url, {"action": "release", "_selected_action": [second.id]}, follow=True)
    retired = admin_client.post(url, {"action": "retire", "_selected_action": [first.id, second.id]}, follow=True)

    assert "@revoked_bot: refused, now invalid" in revalidated.content.decode()
    assert f"@assigned_bot: released from project #{project.id}, now free" in released.content.decode()
    assert "retired; its token is forgotten" in retired.content.decode()
    assert set(BotToken.objects.values_list("status", flat=True)) == {"retired"}
    assert not SecretValue.objects.filter(scope=BOTS_SCOPE).exists()


# --- the intake in the factory's chat -----------------------------------------------------------------------
def factory_said(botapi) -> list[str]:
    return [m["text"] for m in botapi.sent(botapi.factory, chat_id=ADA_TG)]


def waiting_for_a_token(ada, botapi):
    """Ada's own-bot project whose run waits for a token; the question delivered to her chat."""
    project = project_of(ada, own_bot=True)
    run = project.runs.get()
    runs.stage_claim(run_id=run.id, stage="architect", task_id="t-1")
    escalation = agent_services.escalation_raise(
        run_id=run.id, stage="deployer", reason="bot_token", question="Your bot needs a Telegram bot token."
    )
    event = RunEvent.objects.get(run=run, type="escalation.raised")
    delivery.message_send(message_id=notifications.run_event_notify(event.id).id)
    question = botapi.sent(botapi.factory, chat_id=ADA_TG)[-1]
    return project, escalation, question["message_id"]


def test_a_reply_to_the_question_with_the_token_is_deleted_stored_and_answered_by_username(
    client, botapi, ada, ada_tg, django_capture_on_commit_callbacks
):
    project, escalation, question_id = waiting_for_a_token(ada, botapi)
    token = botapi.add_bot("ada_dice_bot")
    update = botapi.make_update(botapi.factory, token, user=ada_tg, reply_to_message_id=question_id)

    # The real logging configuration at DEBUG (urllib3's request lines carry the token: redacted).
    with rendered_logs() as output, django_capture_on_commit_callbacks() as callbacks:
        post_update(client, update)

    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert factory_said(botapi)[-1] == f"Got it: your project will run as @ada_dice_bot (project #{project.id})."
    row = BotToken.objects.get()
    assert (row.status, row.source, row.project_id, row.username) == ("assigned", "user", project.id, "ada_dice_bot")
    assert bots.bot_for_project(project.id).token == token
    assert len(callbacks) >= 1  # escalations.secrets_provided, on commit
    escalation.refresh_from_db()
    assert escalation.status == "open" and escalation.answer == ""  # never answered with the text
    agent_services.escalation_values_provided(project_id=project.id)  # what the task does
    escalation.refresh_from_db()
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "provided", "")
    nowhere_in_plain_text(token)
    rendered = output.getvalue()
    assert rendered and token not in rendered  # something was logged, and never the token


def test_token_command_then_the_token_in_the_next_message(client, botapi, ada, ada_tg):
    project = project_of(ada, own_bot=True)
    token = botapi.add_bot("next_message_bot")

    post_update(client, botapi.make_update(botapi.factory, "/token", user=ada_tg))
    update = botapi.make_update(botapi.factory, token, user=ada_tg)
    post_update(client, update)

    prompt, answer = factory_said(botapi)
    assert prompt.startswith("Send me your bot's token in your next message")
    assert answer == f"Got it: your project will run as @next_message_bot (project #{project.id})."
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    nowhere_in_plain_text(token)


def test_a_malformed_token_after_the_prompt_is_deleted_and_refused_with_the_format_message(client, botapi, ada, ada_tg):
    project_of(ada, own_bot=True)
    post_update(client, botapi.make_update(botapi.factory, "/token", user=ada_tg))
    update = botapi.make_update(botapi.factory, "12345:tooshort", user=ada_tg)

    post_update(client, update)

    assert factory_said(botapi)[-1].startswith("That is not a bot token")
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert Project.objects.count() == 1 and not BotToken.objects.exists()


@pytest.mark.parametrize("refusal", ["revoked", "webhook", "polled"])
def test_an_inline_token_that_fails_validation_is_deleted_and_answered_with_the_reason(
    client, botapi, ada, ada_tg, refusal
):
    project_of(ada, own_bot=True)
    token = botapi.add_bot("refused_bot")
    {
        "revoked": botapi.revoke,
        "webhook": lambda t: botapi.set_webhook(t, "https://x.example/"),
        "polled": botapi.start_foreign_poller,
    }[refusal](token)
    update = botapi.make_update(botapi.factory, f"/token {token}", user=ada_tg)

    post_update(client, update)

    expected = {"revoked": "wrong or revoked", "webhook": "in use elsewhere", "polled": "Another program polls"}
    assert expected[refusal] in factory_said(botapi)[-1]
    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    assert not BotToken.objects.exists()
    nowhere_in_plain_text(token)


def test_a_token_pasted_as_a_plain_message_never_becomes_a_project(client, botapi, ada, ada_tg):
    token = botapi.add_bot("pasted_bot")

    post_update(client, botapi.make_update(botapi.factory, f"here is my bot {token} thanks", user=ada_tg))

    assert not Project.objects.exists()
    assert factory_said(botapi)[-1].startswith("You have no bot project to use a token for")
    assert len(botapi.deleted(botapi.factory, ADA_TG)) == 1
    nowhere_in_plain_text(token)


def test_with_no_waiting_run_the_token_goes_to_the_most_recent_bot_project(client, botapi, ada, ada_tg):
    older, newer = project_of(ada, own_bot=True), project_of(ada, own_bot=True)
    project_of(ada)  # a web project (not planned yet, not own-bot): not a bot project
    token = botapi.add_bot("recent_bot")

    post_update(client, botapi.make_update(botapi.factory, f"/token {token}", user=ada_tg))

    assert BotToken.objects.get().project_id == newer.id != older.id


def test_new_own_bot_creates_a_project_that_waits_for_its_own_bot(client, botapi, ada, ada_tg):
    post_update(client, botapi.make_update(botapi.factory, f"/new --own-bot {DICE}", user=ada_tg))
    post_update(client, botapi.make_update(botapi.factory, "/help", user=ada_tg))

    project = Project.objects.get()
    assert project.own_bot is True and project.description == DICE
    created, help_text = factory_said(botapi)
    assert "It will run as your own bot" in created and "/token" in created
    assert "/new --own-bot <description>" in help_text and "/token <token>" in help_text


def test_a_second_own_token_replaces_the_first_which_is_retired(client, botapi, ada, ada_tg):
    project = project_of(ada, own_bot=True)
    first, second = botapi.add_bot("first_own_bot"), botapi.add_bot("second_own_bot")

    post_update(client, botapi.make_update(botapi.factory, f"/token {first}", user=ada_tg))
    post_update(client, botapi.make_update(botapi.factory, f"/token {second}", user=ada_tg))

    statuses = dict(BotToken.objects.values_list("username", "status"))
    assert statuses == {"first_own_bot": "retired", "second_own_bot": "assigned"}
    assert bots.bot_for_project(project.id).username == "second_own_bot"
    deliver_outbox()
