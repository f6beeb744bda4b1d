"""The scripted Architect plans Telegram bots: the kind from the description, conversation checks."""

from __future__ import annotations

import re
from itertools import combinations

import pytest
from pydantic import ValidationError

from agents.scripted.catalogue import CATALOGUE, CATALOGUE_HELP, ScriptedPlanError, plan
from projects.specs import SLUG, ConversationCheck, ProjectSpec


def feature_names(spec: ProjectSpec) -> list[str]:
    return [feature.name for feature in spec.features]


def test_a_telegram_bot_that_rolls_dice_is_a_dice_bot():
    spec = plan("a telegram bot that rolls dice")
    assert (spec.kind, spec.name, spec.slug) == ("telegram_bot", "Dice Bot", "dice-bot")
    assert feature_names(spec) == ["dice"]
    assert spec.summary == "A Telegram bot that rolls dice."
    assert "/roll" in spec.features[0].summary
    assert spec.acceptance == []  # a bot is checked by conversation, not HTTP
    assert [(check.send, check.expect_contains) for check in spec.conversation] == [("/roll 6", "You rolled")]


def test_a_bot_that_greets_people_by_name_greets_on_start_and_hello():
    spec = plan("a bot that greets people by name")
    assert (spec.kind, feature_names(spec)) == ("telegram_bot", ["greet"])
    assert [(check.send, check.expect_contains) for check in spec.conversation] == [
        ("/start", "Hello"),
        ("/hello Ada", "Hello, Ada!"),
    ]


def test_a_bot_needs_its_token_from_the_bot_pool():
    spec = plan("a chatbot that echoes messages")
    assert [(var.name, var.source) for var in spec.env] == [("TELEGRAM_BOT_TOKEN", "bot_token")]
    assert spec.env[0].value is None  # never a value in the spec


@pytest.mark.parametrize("word", ["telegram bot", "bot", "bots", "chatbot", "chat"])
def test_bot_words_choose_the_kind(word):
    assert plan(f"a {word} that echoes text").kind == "telegram_bot"


def test_without_a_bot_word_the_kind_stays_web_service():
    spec = plan("a web service that greets people by name")
    assert (spec.kind, spec.conversation, spec.env) == ("web_service", [], [])


def test_chat_words_are_understood_in_a_bot_description_only():
    spec = plan("a Telegram bot that greets people when they send the start command")
    assert feature_names(spec) == ["greet"]
    with pytest.raises(ScriptedPlanError, match='"start", "command"'):
        plan("a web service that greets people when they send the start command")


@pytest.mark.parametrize("feature", CATALOGUE, ids=lambda feature: feature.name)
def test_every_bot_example_plans_its_own_feature_as_a_bot(feature):
    spec = plan(feature.bot_example)
    assert (spec.kind, feature_names(spec)) == ("telegram_bot", [feature.name])
    assert spec.conversation == list(feature.conversation)
    assert all(check.name.startswith(f"{feature.name}: ") for check in spec.conversation)


def test_any_combination_of_bot_examples_plans_those_features_with_a_valid_bot_slug():
    for size in (1, 2, 3, len(CATALOGUE)):
        for combo in combinations(CATALOGUE, size):
            spec = plan(" and ".join(feature.bot_example for feature in combo))
            assert feature_names(spec) == [feature.name for feature in combo]
            assert re.fullmatch(SLUG, spec.slug) and spec.slug.endswith("-bot"), spec.slug
            assert len(spec.conversation) == sum(len(feature.conversation) for feature in combo)


def test_bot_features_are_combined_in_catalogue_order():
    spec = plan("a telegram bot that rolls dice, keeps notes and adds numbers")
    assert feature_names(spec) == ["notes", "calculator", "dice"]
    assert (spec.name, spec.slug) == ("Notes, Calculator and Dice Bot", "notes-calculator-dice-bot")


@pytest.mark.parametrize(
    ("description", "unknown"),
    [
        ("a bot that tells the weather", ["weather"]),
        ("a telegram bot that greets people and orders pizza", ["orders", "pizza"]),
    ],
)
def test_words_outside_the_catalogue_refuse_a_bot_by_name(description, unknown):
    with pytest.raises(ScriptedPlanError) as refusal:
        plan(description)
    lines = str(refusal.value).splitlines()
    assert lines[0] == "The scripted architect did not understand: " + ", ".join(f'"{w}"' for w in unknown) + "."
    assert "kind telegram_bot" in lines[1]


def test_a_bot_with_no_feature_is_refused():
    with pytest.raises(ScriptedPlanError, match="no feature"):
        plan("please make me a telegram chatbot")


def test_catalogue_help_lists_the_bot_features_and_no_longer_refuses_bots():
    for feature in CATALOGUE:
        assert f'Example: "{feature.bot_example}".' in CATALOGUE_HELP
    assert "web services only" not in CATALOGUE_HELP
    assert "telegram_bot" in CATALOGUE_HELP


def test_a_bot_spec_survives_a_round_trip_through_json():
    spec = plan("a telegram bot that greets people by name and rolls dice")
    assert ProjectSpec.model_validate_json(spec.model_dump_json()) == spec


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "x", "send": "", "expect_contains": "y"},
        {"name": "x", "send": "hi", "expect_contains": ""},
        {"name": "x", "send": "a" * 4097, "expect_contains": "y"},
        {"name": "x", "send": "hi", "expect_contains": "y", "path": "/"},
    ],
)
def test_conversation_checks_refuse_empty_oversized_or_unknown_fields(raw):
    with pytest.raises(ValidationError):
        ConversationCheck.model_validate(raw)
