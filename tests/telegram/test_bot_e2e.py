"""Telegram bots end to end from the factory's chat: a person describes a bot (webhook), a real
Celery worker builds, rehearses and deploys it, and the new bot answers other people through the
product's loopback Bot API (the factory's bot and the people's bots on one stand-in, as on
Telegram). The token comes from the pool (US2) or from the person, pasted in reply to the question
that asks for it (US1): the message is deleted, refused tokens are explained, and the token is
written down nowhere."""

from __future__ import annotations

import time

import pytest

from agents.models import Escalation
from orchestrator import bots
from orchestrator.telegram.standin import make_user, mint_token
from projects import people
from projects.models import Deployment, OutboundMessage, PipelineRun, RunEvent
from secrets_meta.models import BotToken
from tests.conftest import wait_for_run
from tests.telegram.conftest import ADA_TG, BOB_TG, post_update

pytestmark = pytest.mark.e2e

GREETER = "a telegram bot that greets people by name"
STRANGER = make_user(990101, first_name="Grace", username="grace_h")
RUN_TIMEOUT = 240


@pytest.fixture
def bob_tg() -> dict:
    return make_user(BOB_TG, first_name="Bob", username="bob_b")


@pytest.fixture
def bob(other_user, bob_tg):
    people.account_link(user=other_user, telegram_user_id=BOB_TG, chat_id=BOB_TG, username="bob_b")
    return other_user


@pytest.fixture
def worker(botapi, celery_procs, settings):
    """A real Celery worker talking to the stand-in: as the factory's bot (TELEGRAM_*), and for the
    releases it deploys, which poll the stand-in as their Bot API (BOTS_API_URL)."""
    settings.BOTS_API_URL = botapi.base_url
    return celery_procs.worker(
        TELEGRAM_API_URL=botapi.api_url, TELEGRAM_BOT_TOKEN=botapi.factory, BOTS_API_URL=botapi.base_url
    )


def describe(client, botapi, person: dict, text: str = GREETER) -> PipelineRun:
    """The person writes a description to the factory's bot; the run it started."""
    before = set(PipelineRun.objects.values_list("id", flat=True))
    response = post_update(client, botapi.make_update(botapi.factory, text, user=person), deliver=False)
    assert response.status_code == 200
    return PipelineRun.objects.exclude(id__in=before).get()


def hear(botapi, person: dict, contains: str, timeout: float = 30) -> dict:
    """The first message of the factory's bot to the person containing ``contains``."""
    return botapi.wait_for_reply(botapi.factory, person["id"], contains, timeout=timeout)


def wait_for_question(botapi, celery_procs, run: PipelineRun, person: dict) -> dict:
    """The run waits for a bot token: its question has arrived in the person's chat and the outbox
    recorded which Telegram message carried it (a reply to that message is the answer)."""
    question = hear(botapi, person, f"run #{run.id} needs you", timeout=RUN_TIMEOUT)
    deadline = time.monotonic() + 15
    carrier = OutboundMessage.objects.filter(escalation__run=run, telegram_message_id=question["message_id"])
    while not carrier.exists():
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.1)
    escalation = Escalation.objects.get(run=run)
    assert (escalation.reason, escalation.status) == ("bot_token", "open")
    assert PipelineRun.objects.get(id=run.id).status == "waiting_human"
    assert "@BotFather" in question["text"] and "reply to this message with its token" in question["text"]
    return question


def reply_with(client, botapi, person: dict, question: dict, text: str) -> dict:
    """The person replies to the question; the update (its message is the one to be deleted)."""
    update = botapi.make_update(botapi.factory, text, user=person, reply_to_message_id=question["message_id"])
    post_update(client, update, deliver=False)
    return update


def goes_live(botapi, celery_procs, run: PipelineRun, person: dict, username: str) -> PipelineRun:
    final = hear(botapi, person, f"Your bot @{username} is live: say /start to it.", timeout=RUN_TIMEOUT)
    run = wait_for_run(run.id, timeout=60, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(project_id=run.project_id, status="live")
    assert final["text"].endswith(f"Your bot @{username} is live: say /start to it.\n{live.url}")
    assert live.url == f"https://t.me/{username}"
    assert BotToken.objects.get(project_id=run.project_id, status="assigned").username == username
    return run


def answers_a_stranger(botapi, token: str, stranger: dict = STRANGER) -> None:
    """Someone else says /start and /hello Ada to the new bot, and it answers them."""
    botapi.say(token, "/start", user=stranger)
    start = botapi.wait_for_reply(token, stranger["id"], "Hello, ", timeout=20)
    assert start["text"].startswith(f"Hello, {stranger['first_name']}!") and "/hello" in start["text"]
    botapi.say(token, "/hello Ada", user=stranger)
    assert botapi.wait_for_reply(token, stranger["id"], "Hello, Ada!", timeout=20)["text"] == "Hello, Ada!"


def written_nowhere(token: str, celery_procs, capfd) -> None:
    """The token is in no message to anyone, question, event, or log line of the worker or of this
    process (the webhook that took it ran here)."""
    places = {
        "outbound messages": "\n".join(OutboundMessage.objects.values_list("text", flat=True)),
        "escalations": str(list(Escalation.objects.values())),
        "run events": str(list(RunEvent.objects.values_list("type", "payload"))),
        "bot tokens": str(list(BotToken.objects.values())),
        "the worker's log": celery_procs.logs(tail=None),
        "this process's output": "".join(capfd.readouterr()),
    }
    assert {place: text.count(token) for place, text in places.items()} == dict.fromkeys(places, 0)
    assert places["the worker's log"] and places["outbound messages"]  # looked for where it would be


# --- US2: the pool hands the bot ------------------------------------------------------------------
def test_a_bot_described_in_the_chat_takes_a_pool_bot_goes_live_and_answers_a_stranger(
    botapi, worker, celery_procs, client, ada, ada_tg
):
    token = botapi.add_bot("greeter_pool_bot")
    bots.pool_add(token)

    run = describe(client, botapi, ada_tg)

    assert f"run #{run.id} is queued" in hear(botapi, ada_tg, "is queued")["text"]
    run = goes_live(botapi, celery_procs, run, ada_tg, "greeter_pool_bot")
    answers_a_stranger(botapi, token)
    assert not Escalation.objects.exists()  # nobody was asked for anything
    said = [m["text"] for m in botapi.sent(botapi.factory, chat_id=ADA_TG)]
    assert not any(token in text for text in said)


# --- US1: an empty pool, the person's own token -----------------------------------------------------
def test_with_an_empty_pool_the_person_is_asked_and_the_token_they_reply_with_puts_their_bot_live(
    botapi, worker, celery_procs, client, ada, ada_tg, capfd
):
    run = describe(client, botapi, ada_tg)
    question = wait_for_question(botapi, celery_procs, run, ada_tg)
    assert "the factory has no free bot right now" in question["text"]
    token = botapi.add_bot("adas_greeter_bot")

    update = reply_with(client, botapi, ada_tg, question, token)

    assert botapi.deleted(botapi.factory, ADA_TG) == [update["message"]["message_id"]]
    answer = hear(botapi, ada_tg, "Got it: your project will run as")["text"]
    assert answer.startswith("Got it: your project will run as @adas_greeter_bot (project ")
    assert token not in answer and token.split(":")[1] not in answer
    goes_live(botapi, celery_procs, run, ada_tg, "adas_greeter_bot")
    assert BotToken.objects.get(username="adas_greeter_bot").source == "user"
    escalation = Escalation.objects.get(run=run)
    assert (escalation.status, escalation.action, escalation.answer) == ("answered", "provided", "")
    answers_a_stranger(botapi, token)
    written_nowhere(token, celery_procs, capfd)


# --- two bot projects at once ----------------------------------------------------------------------
def test_two_bot_projects_at_once_with_a_pool_of_two_each_go_live_with_a_different_bot(
    botapi, worker, celery_procs, client, ada, ada_tg, bob, bob_tg
):
    tokens = {"pool_one_bot": botapi.add_bot("pool_one_bot"), "pool_two_bot": botapi.add_bot("pool_two_bot")}
    for token in tokens.values():
        bots.pool_add(token)

    runs = {ADA_TG: describe(client, botapi, ada_tg), BOB_TG: describe(client, botapi, bob_tg)}

    finals = {
        person["id"]: hear(botapi, person, "is live: say /start to it.", timeout=RUN_TIMEOUT)
        for person in (ada_tg, bob_tg)
    }
    usernames = {}
    for person in (ada_tg, bob_tg):
        run = wait_for_run(runs[person["id"]].id, timeout=60, procs=celery_procs)
        assert run.status == "succeeded", run.error_message
        usernames[person["id"]] = BotToken.objects.get(project_id=run.project_id, status="assigned").username
        assert f"Your bot @{usernames[person['id']]} is live" in finals[person["id"]]["text"]
    assert sorted(usernames.values()) == ["pool_one_bot", "pool_two_bot"]  # never the same bot twice
    assert not Escalation.objects.exists()
    for n, username in enumerate(usernames.values()):
        answers_a_stranger(botapi, tokens[username], make_user(990200 + n, first_name=f"Guest{n}", username=None))


def test_with_a_pool_of_one_one_bot_goes_live_and_the_other_waits_until_a_good_token_comes(
    botapi, worker, celery_procs, client, ada, ada_tg, bob, bob_tg
):
    """The second project waits for a token; a wrong one, one with a webhook set and one another
    program polls are each deleted and refused with their own reason while it keeps waiting; then
    a good one puts it live."""
    pool_token = botapi.add_bot("only_pool_bot")
    bots.pool_add(pool_token)
    people_by_id = {ADA_TG: ada_tg, BOB_TG: bob_tg}

    runs = {ADA_TG: describe(client, botapi, ada_tg), BOB_TG: describe(client, botapi, bob_tg)}

    deadline = time.monotonic() + RUN_TIMEOUT
    while not Escalation.objects.exists() or not BotToken.objects.filter(status="assigned").exists():
        assert time.monotonic() < deadline, celery_procs.logs()
        time.sleep(0.5)
    waiting_run = Escalation.objects.get().run
    waiting_id = next(tg for tg, run in runs.items() if run.id == waiting_run.id)
    lucky_id = ADA_TG if waiting_id == BOB_TG else BOB_TG
    waiting, lucky = people_by_id[waiting_id], people_by_id[lucky_id]
    goes_live(botapi, celery_procs, runs[lucky_id], lucky, "only_pool_bot")
    question = wait_for_question(botapi, celery_procs, runs[waiting_id], waiting)
    assert "the factory has no free bot right now" in question["text"]
    answers_a_stranger(botapi, pool_token)

    wrong = mint_token(7_000_000_001)  # no such bot: getMe answers 401
    hooked = botapi.add_bot("hooked_elsewhere_bot")
    botapi.set_webhook(hooked, "https://elsewhere.example/hook")
    polled = botapi.add_bot("polled_elsewhere_bot")
    botapi.start_foreign_poller(polled)
    refusals = [
        (wrong, "Telegram does not accept this token: the token is wrong or revoked."),
        (hooked, "A webhook is set for @hooked_elsewhere_bot: the bot is in use elsewhere."),
        (polled, "Another program polls @polled_elsewhere_bot (Telegram answered 409 Conflict)."),
    ]
    for n, (token, reason) in enumerate(refusals, start=1):
        update = reply_with(client, botapi, waiting, question, token)
        assert botapi.deleted(botapi.factory, waiting_id)[-1] == update["message"]["message_id"]
        assert len(botapi.deleted(botapi.factory, waiting_id)) == n
        assert token not in hear(botapi, waiting, reason)["text"]
        assert PipelineRun.objects.get(id=waiting_run.id).status == "waiting_human"
        assert Escalation.objects.get(run=waiting_run).status == "open"
    assert BotToken.objects.filter(status="assigned").count() == 1  # none of them was taken

    good = botapi.add_bot("waiting_persons_bot")
    update = reply_with(client, botapi, waiting, question, good)

    assert botapi.deleted(botapi.factory, waiting_id)[-1] == update["message"]["message_id"]
    hear(botapi, waiting, "Got it: your project will run as @waiting_persons_bot")
    goes_live(botapi, celery_procs, runs[waiting_id], waiting, "waiting_persons_bot")
    answers_a_stranger(botapi, good, make_user(990301, first_name="Linus", username="linus"))
    usernames = set(BotToken.objects.filter(status="assigned").values_list("username", flat=True))
    assert usernames == {"only_pool_bot", "waiting_persons_bot"}
