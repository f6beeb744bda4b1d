"""The bot's commands: ``register(bot)`` adds pyTelegramBotAPI handlers to the bot; app.py runs it.

For example:

    def register(bot: telebot.TeleBot) -> None:
        @bot.message_handler(commands=["hello"])
        def hello(message: telebot.types.Message) -> None:
            name = telebot.util.extract_arguments(message.text) or "world"
            bot.send_message(message.chat.id, f"Hello, {name}!")

Handlers are tried in the order they are registered; the first that matches handles the
message. An exception in a handler is logged and costs that one update, never the bot.
"""

from __future__ import annotations

import telebot


def register(bot: telebot.TeleBot) -> None:
    """Add this bot's handlers to ``bot``."""
