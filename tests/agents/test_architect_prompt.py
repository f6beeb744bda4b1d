"""The LLM Architect's prompt tells it both kinds: a web service's HTTP acceptance checks, a bot's
conversation checks and its token's source."""

from __future__ import annotations

from agents.backends.openai_compatible import ARCHITECT_PROMPT
from projects.specs import ConversationCheck, EnvVar


def test_the_prompt_says_what_a_telegram_bot_spec_carries():
    assert '"telegram_bot"' in ARCHITECT_PROMPT and '"web_service"' in ARCHITECT_PROMPT
    assert '{"name", "send", "expect_contains"}' in ARCHITECT_PROMPT
    assert set(ConversationCheck.model_fields) == {"name", "send", "expect_contains"}  # the fields it names
    assert 'TELEGRAM_BOT_TOKEN with source "bot_token"' in ARCHITECT_PROMPT
    assert "bot_token" in EnvVar.model_fields["source"].annotation.__args__
    assert "A telegram_bot has no acceptance checks" in ARCHITECT_PROMPT
