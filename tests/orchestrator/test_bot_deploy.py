"""Deploying Telegram bots: rehearsed against the loopback Bot API with a throwaway token, then
started with the real one (a pool bot, or the person's own), one poller per token, rolled back
when the new release cannot poll. Stages driven in this process; real releases on loopback; the
product's Bot API stand-in plays Telegram for the factory and for the bots alike."""

from __future__ import annotations

import pytest

from agents import services as agent_services
from agents.models import Escalation
from orchestrator import bots
from orchestrator.deploy.botcheck import CHECK_USER
from orchestrator.procs import process_alive
from orchestrator.telegram.standin import StandIn, make_user
from projects import runs
from projects.models import Deployment, PipelineRun, RunEvent, StageRun
from secrets_meta.models import BotToken
from tests.orchestrator.test_stages_idempotent import drive

BOT = "a telegram bot that greets people by name"
STRANGER = make_user(990001, first_name="Grace", username="grace_h")


@pytest.fixture
def botapi(settings):
    server = StandIn().start()
    settings.TELEGRAM_API_URL = server.api_url
    settings.BOTS_API_URL = server.base_url
    yield server
    server.stop()


def _live(run: PipelineRun) -> Deployment:
    return Deployment.objects.get(project_id=run.project_id, status="live")


def _assigned(run: PipelineRun) -> BotToken:
    return BotToken.objects.get(project_id=run.project_id, status="assigned")


def test_a_bot_from_the_pool_goes_live_and_answers_a_stranger(new_run, botapi):
    token = botapi.add_bot("greeter_42_bot")
    bots.pool_add(token)
    run = new_run(BOT)

    drive(run.id)

    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    assert "Your bot @greeter_42_bot is live: say /start to it." in run.result_message
    assert _live(run).url == "https://t.me/greeter_42_bot"
    assert _assigned(run).username == "greeter_42_bot"
    botapi.say(token, "/hello Ada", user=STRANGER)
    assert "Hello, Ada!" in botapi.wait_for_reply(token, STRANGER["id"], "Hello, Ada!", timeout=15)["text"]


def test_the_release_was_rehearsed_with_a_throwaway_token_before_it_got_the_real_one(new_run, botapi):
    token = botapi.add_bot("greeter_42_bot")
    bots.pool_add(token)
    run = new_run(BOT)

    drive(run.id)

    deployed = StageRun.objects.get(run=run, stage="deployer", status="succeeded").output
    assert deployed["rehearsal"] and all("Hello" in line or "/start" in line for line in deployed["rehearsal"])
    assert botapi.sent(token, chat_id=CHECK_USER["id"]) == []  # the checks never reached the real bot


def test_with_an_empty_pool_the_run_asks_for_a_token_and_goes_on_once_it_is_given(new_run, botapi):
    run = new_run(BOT)

    drive(run.id)

    run.refresh_from_db()
    escalation = Escalation.objects.get(run=run)
    assert run.status == "waiting_human" and escalation.reason == "bot_token"
    assert "@BotFather" in escalation.question and "no free bot" in escalation.question
    token = botapi.add_bot("adas_own_bot")
    bots.own_token_intake(run.project_id, token, actor="test")
    agent_services.escalation_values_provided(project_id=run.project_id)
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    assert _assigned(run).source == "user" and "@adas_own_bot" in run.result_message


def test_a_person_who_wants_their_own_bot_is_asked_even_with_a_full_pool(new_run, botapi):
    bots.pool_add(botapi.add_bot("pool_1_bot"))
    run = new_run(BOT)
    run.project.__class__.objects.filter(id=run.project_id).update(own_bot=True)

    drive(run.id)

    escalation = Escalation.objects.get(run=run)
    assert escalation.reason == "bot_token" and "you asked for your own bot" in escalation.question
    assert BotToken.objects.get(username="pool_1_bot").status == "free"


def test_a_guidance_text_never_answers_a_token_question(new_run, botapi, user):
    run = new_run(BOT)
    drive(run.id)
    escalation = Escalation.objects.get(run=run)
    with pytest.raises(Exception) as refused:
        agent_services.escalation_answer(escalation_id=escalation.id, user=user, action="guidance", answer="12:abc")
    assert refused.value.code == "values_required"
    assert Escalation.objects.get(id=escalation.id).answer == ""


def test_a_new_release_that_cannot_poll_with_the_real_token_is_rolled_back(new_run, botapi):
    token = botapi.add_bot("greeter_42_bot")
    bots.pool_add(token)
    first_run = new_run(BOT)
    drive(first_run.id)
    first = _live(first_run)
    second_run = runs.run_create(project=first_run.project, kind="redeploy")
    botapi.fail(token, "getUpdates", 502, "Bad Gateway", times=10_000)  # Telegram trouble from now on

    drive(second_run.id)

    second_run.refresh_from_db()
    failed = Deployment.objects.get(run=second_run)
    assert failed.status == "failed" and "with the real token" in failed.error
    restored = _live(first_run)
    assert restored.id == first.id and process_alive(restored.pid) and restored.pid != first.pid
    told = RunEvent.objects.get(run=second_run, type="deploy.rolled_back")
    assert told.payload["restored"] == [first.id]
    # Not the code's fault (it passed its rehearsal): no new iteration, a person is asked.
    question = Escalation.objects.get(run=second_run)
    assert second_run.status == "waiting_human" and second_run.iteration == 1
    assert "could not poll Telegram" in question.question and "previous release serves again" in question.question


def test_a_bot_release_never_sees_the_factorys_own_token_or_other_bots(new_run, botapi, settings):
    token = botapi.add_bot("greeter_42_bot")
    other = botapi.add_bot("someone_elses_bot")
    bots.pool_add(token)
    run = new_run(BOT)
    drive(run.id)
    with open(f"/proc/{_live(run).pid}/environ", "rb") as fh:
        environ = fh.read()
    assert token.encode() in environ and other.encode() not in environ


def test_deleting_a_live_bot_project_in_admin_stops_it_and_gives_its_bot_back(new_run, botapi, admin_client):
    token = botapi.add_bot("greeter_42_bot")
    bots.pool_add(token)
    run = new_run(BOT)
    drive(run.id)
    live = _live(run)

    response = admin_client.post(f"/admin/projects/project/{run.project_id}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not process_alive(live.pid)
    bot = BotToken.objects.get(username="greeter_42_bot")
    assert (bot.status, bot.project_id) == ("free", None)
    assert botapi.webhook(token) == "" and botapi.commands(token) == []


def test_the_probe_asks_telegram_about_a_live_bot_and_a_revoked_token_is_an_outage(new_run, botapi):
    from orchestrator import releases
    from projects.models import Incident

    token = botapi.add_bot("greeter_42_bot")
    bots.pool_add(token)
    run = new_run(BOT)
    drive(run.id)
    getme_before = len(botapi.calls(token, "getMe"))
    assert releases.releases_probe() == {"probed": 1, "down": 0, "opened": 0, "given_up": 0, "deploying": 0}
    assert len(botapi.calls(token, "getMe")) == getme_before + 1  # each probe asks Telegram

    botapi.revoke(token)  # the owner revoked it at @BotFather; the release still says it polled
    counts = releases.releases_probe()

    assert counts["down"] == 1
    incident = Incident.objects.get(project_id=run.project_id)
    assert "Telegram refuses the bot's token" in incident.reason
