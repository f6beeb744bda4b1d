"""The scripted Architect: descriptions in, ProjectSpecs or clear refusals out."""

from __future__ import annotations

import re
from itertools import combinations

import pytest

from agents.scripted.catalogue import CATALOGUE, CATALOGUE_HELP, ScriptedPlanError, plan
from projects.specs import SLUG, ProjectSpec


def feature_names(spec: ProjectSpec) -> list[str]:
    return [feature.name for feature in spec.features]


def test_greeting_description_plans_the_greet_feature():
    spec = plan("a web service that greets people by name")
    assert feature_names(spec) == ["greet"]
    assert (spec.name, spec.slug, spec.kind) == ("Greeter", "greeter", "web_service")
    assert spec.env == []
    assert "greets people by name" in spec.summary


def test_plan_checks_health_and_each_feature():
    spec = plan("a web service that greets people by name")
    checks = {(check.method, check.path): check for check in spec.acceptance}
    assert checks[("GET", "/health")].expect_status == 200
    greet = checks[("GET", "/greet?name=Ada")]
    assert (greet.expect_status, greet.expect_contains) == (200, "Hello, Ada!")


def test_several_features_are_combined_in_catalogue_order():
    spec = plan("Please build an API that rolls dice, greets visitors and echoes text back.")
    assert feature_names(spec) == ["greet", "echo", "dice"]
    assert spec.name == "Greeter, Echo and Dice"
    assert spec.slug == "greeter-echo-dice"
    paths = [check.path for check in spec.acceptance]
    assert paths[0] == "/health"
    assert {"/greet?name=Ada", "/echo?text=hi", "/roll?sides=6"} <= set(paths)


def test_adding_notes_is_notes_not_a_calculator():
    assert feature_names(plan("a service where I can add notes and list them")) == ["notes"]


def test_adding_numbers_is_a_calculator():
    assert feature_names(plan("an api that adds two numbers")) == ["calculator"]


def test_adding_numbers_next_to_other_features_keeps_the_calculator():
    spec = plan("count visits, keep notes, add numbers and roll dice")
    assert feature_names(spec) == ["counter", "notes", "calculator", "dice"]


def test_inflections_and_typographic_apostrophes_are_understood():
    assert feature_names(plan("It\u2019s a greeting service that says hello")) == ["greet"]
    assert feature_names(plan("What time is it now?")) == ["time"]


@pytest.mark.parametrize("feature", CATALOGUE, ids=lambda feature: feature.name)
def test_every_catalogue_example_plans_its_own_feature(feature):
    assert feature_names(plan(feature.example)) == [feature.name]


def test_any_combination_of_examples_plans_exactly_those_features_with_a_valid_slug():
    for size in range(1, len(CATALOGUE) + 1):
        for combo in combinations(CATALOGUE, size):
            spec = plan(" and ".join(feature.example for feature in combo))
            assert feature_names(spec) == [feature.name for feature in combo]
            assert re.fullmatch(SLUG, spec.slug), spec.slug
            assert len(spec.acceptance) == 1 + sum(len(feature.checks) for feature in combo)


@pytest.mark.parametrize(
    ("description", "unknown"),
    [
        ("a bot that tells the weather", ["weather"]),
        ("a web service that greets people and sends email", ["sends", "email"]),
        ("a Telegram bot that greets people and orders pizza", ["orders", "pizza"]),
        ("a service that counts words in a text", ["words", "text"]),
    ],
)
def test_words_outside_the_catalogue_are_refused_by_name(description, unknown):
    with pytest.raises(ScriptedPlanError) as refusal:
        plan(description)
    message = str(refusal.value)
    first_line = message.splitlines()[0]
    assert (
        first_line == "The scripted architect did not understand: " + ", ".join(f'"{word}"' for word in unknown) + "."
    )
    assert CATALOGUE_HELP in message


def test_a_bot_description_without_a_known_feature_is_refused_as_a_bot():
    with pytest.raises(ScriptedPlanError, match="no feature") as refusal:
        plan("a telegram bot")
    assert "telegram_bot" in str(refusal.value)


@pytest.mark.parametrize("description", ["", "   \n"])
def test_empty_description_is_refused(description):
    with pytest.raises(ScriptedPlanError, match="empty"):
        plan(description)


def test_description_with_only_filler_is_refused():
    with pytest.raises(ScriptedPlanError, match="no feature"):
        plan("Please make me a simple little web service")


def test_refusal_is_a_value_error_pointing_to_an_llm_backend():
    with pytest.raises(ValueError) as refusal:
        plan("a weather dashboard")
    message = str(refusal.value)
    assert "architect" in message
    assert "claude_code" in message and "openai_compatible" in message


def test_catalogue_help_lists_every_feature_with_an_example():
    lines = CATALOGUE_HELP.splitlines()
    for feature in CATALOGUE:
        line = next(line for line in lines if line.strip().startswith(feature.name + " "))
        assert feature.example in line
