"""Telegram, in one package: ``transport`` (the Bot API edge, the only user of the SDK),
``handlers`` (the bot's commands), ``webhook`` (the view Telegram calls) and ``delivery`` (the
outbox sent in order through the transport). What a person is told, and its rendering, is
``projects.notifications``."""
