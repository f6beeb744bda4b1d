"""The scripted Developer's canned Telegram bot features (kind telegram_bot), written as text.

Stdlib only, like agent.py, which imports it: it runs inside a worker. Each feature is a
``register_<name>(bot)`` function adding pyTelegramBotAPI handlers, and its tests, which talk to
the running bot through the template's loopback Bot API (templates/telegram_bot, the ``chat``
fixture). The chat contract of each feature is the catalogue's ``bot_summary``
(agents/scripted/catalogue.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class BotFeatureCode:
    """The canned implementation of one catalogue feature as bot commands."""

    imports: tuple[str, ...]  # import lines handlers.py needs
    code: str  # register_<name>(bot) and its in-memory state
    commands: tuple[tuple[str, str], ...]  # (usage, what it does) for /help
    bug: tuple[str, str]  # (correct snippet, wrong snippet): the deliberate fault
    test_imports: tuple[str, ...]
    tests: str


BOT_FEATURES = {
    "greet": BotFeatureCode(
        imports=(),
        code='''
def register_greet(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["start"])
    def start(message: Message) -> None:
        """/start -> "Hello, <first name>! ..." pointing to /hello."""
        name = _first_name(message) or "there"
        _reply(bot, message, f"Hello, {name}! Send /hello <name> and I will greet them. /help lists what I can do.")

    @bot.message_handler(commands=["hello"])
    def hello(message: Message) -> None:
        """/hello Ada -> "Hello, Ada!"; /hello alone greets the sender."""
        name = _args(message) or _first_name(message) or "world"
        _reply(bot, message, f"Hello, {name}!")
''',
        commands=(("/hello <name>", "greet someone by name"),),
        bug=('f"Hello, {name}!")', 'f"Hallo, {name}!")'),
        test_imports=(),
        tests="""
def test_hello_greets_by_name(chat):
    assert chat.send("/hello Ada") == "Hello, Ada!"


def test_hello_keeps_the_whole_name(chat):
    assert chat.send("/hello Ada Lovelace") == "Hello, Ada Lovelace!"


def test_hello_alone_greets_the_sender(chat):
    assert chat.send("/hello") == f"Hello, {chat.first_name}!"


def test_start_greets_the_sender(chat):
    reply = chat.send("/start")
    assert reply.startswith(f"Hello, {chat.first_name}!") and "/hello" in reply
""",
    ),
    "echo": BotFeatureCode(
        imports=(),
        code='''
def register_echo(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["echo"])
    def echo_command(message: Message) -> None:
        """/echo hi there -> "hi there"."""
        _reply(bot, message, _args(message) or "Send /echo <text> and I will repeat it.")

    @bot.message_handler(func=lambda message: not (message.text or "").startswith("/"), content_types=["text"])
    def echo_text(message: Message) -> None:
        """Any text that is not a command -> the same text."""
        _reply(bot, message, message.text)
''',
        commands=(("/echo <text>", "repeat your text (or just write to me)"),),
        bug=("_reply(bot, message, message.text)", "_reply(bot, message, message.text.upper())"),
        test_imports=(),
        tests="""
def test_echo_repeats_the_text(chat):
    assert chat.send("/echo hi there") == "hi there"


def test_echo_repeats_any_text(chat):
    assert chat.send("Polly wants a cracker") == "Polly wants a cracker"


def test_echo_alone_says_how_to_use_it(chat):
    assert "/echo <text>" in chat.send("/echo")
""",
    ),
    "time": BotFeatureCode(
        imports=("from datetime import datetime, timezone",),
        code='''
def register_time(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["time"])
    def current_time(message: Message) -> None:
        """/time -> "Current UTC time: 2024-05-01T12:00:00+00:00"."""
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        _reply(bot, message, f"Current UTC time: {now}")
''',
        commands=(("/time", "the current UTC time"),),
        bug=("datetime.now(timezone.utc)", "datetime.now()"),
        test_imports=("from datetime import datetime, timedelta, timezone",),
        tests="""
def test_time_is_the_current_utc_time_in_iso_8601(chat):
    reply = chat.send("/time")
    assert reply.startswith("Current UTC time: ")
    stamp = datetime.fromisoformat(reply.split(": ", 1)[1])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
""",
    ),
    "counter": BotFeatureCode(
        imports=("import threading",),
        code='''
_counts_lock = threading.Lock()
_counts: dict[int, int] = {}  # chat id -> count


def register_counter(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["count"])
    def count(message: Message) -> None:
        """/count -> adds one to this chat's counter: "Count: n"."""
        with _counts_lock:
            value = _counts[message.chat.id] = _counts.get(message.chat.id, 0) + 1
        _reply(bot, message, f"Count: {value}")

    @bot.message_handler(commands=["counter"])
    def counter(message: Message) -> None:
        """/counter -> "Count: n", unchanged."""
        with _counts_lock:
            value = _counts.get(message.chat.id, 0)
        _reply(bot, message, f"Count: {value}")
''',
        commands=(("/count", "add one to your counter"), ("/counter", "show your counter")),
        bug=("_counts.get(message.chat.id, 0) + 1", "_counts.get(message.chat.id, 0) + 2"),
        test_imports=("from conftest import Chat",),
        tests="""
def test_count_adds_one_and_counter_reads_it(chat):
    assert chat.send("/counter") == "Count: 0"
    assert chat.send("/count") == "Count: 1"
    assert chat.send("/count") == "Count: 2"
    assert chat.send("/counter") == "Count: 2"


def test_count_is_kept_per_chat(chat, bot_api):
    chat.send("/count")
    assert Chat(bot_api).send("/counter") == "Count: 0"
""",
    ),
    "notes": BotFeatureCode(
        imports=("import threading",),
        code='''
_notes_lock = threading.Lock()
_notes: dict[int, list[str]] = {}  # chat id -> notes, oldest first


def register_notes(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["note"])
    def note(message: Message) -> None:
        """/note buy milk -> "Saved note n: buy milk"."""
        text = _args(message)
        if not text:
            _reply(bot, message, "Send /note <text> to save a note, and /notes to list them.")
            return
        with _notes_lock:
            notes = _notes.setdefault(message.chat.id, [])
            notes.append(text)
            number = len(notes)
        _reply(bot, message, f"Saved note {number}: {text}")

    @bot.message_handler(commands=["notes"])
    def notes_list(message: Message) -> None:
        """/notes -> this chat's notes, "n. text" a line, oldest first."""
        with _notes_lock:
            notes = list(_notes.get(message.chat.id, []))
        if not notes:
            _reply(bot, message, "No notes yet. Send /note <text> to save one.")
            return
        _reply(bot, message, "\\n".join(f"{number}. {text}" for number, text in enumerate(notes, 1)))
''',
        commands=(("/note <text>", "save a note"), ("/notes", "list your notes")),
        bug=("enumerate(notes, 1)", "enumerate(notes)"),
        test_imports=("from conftest import Chat",),
        tests="""
def test_note_saves_and_notes_lists_them_oldest_first(chat):
    assert chat.send("/notes").startswith("No notes yet.")
    assert chat.send("/note buy milk") == "Saved note 1: buy milk"
    assert chat.send("/note call Ada") == "Saved note 2: call Ada"
    assert chat.send("/notes") == "1. buy milk\\n2. call Ada"


def test_note_without_text_says_how_to_use_it(chat):
    assert "/note <text>" in chat.send("/note")


def test_notes_are_kept_per_chat(chat, bot_api):
    chat.send("/note mine")
    assert Chat(bot_api).send("/notes").startswith("No notes yet.")
""",
    ),
    "calculator": BotFeatureCode(
        imports=("import math",),
        code='''
def _operands(message: Message) -> tuple[float, float] | None:
    """The two finite numbers after the command, or None."""
    parts = _args(message).split()
    if len(parts) != 2:
        return None
    try:
        a, b = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (a, b) if math.isfinite(a) and math.isfinite(b) else None


def _number(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def register_calculator(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["add"])
    def add(message: Message) -> None:
        """/add 2 3 -> "2 + 3 = 5"."""
        operands = _operands(message)
        if operands is None:
            _reply(bot, message, "Send two numbers, e.g. /add 2 3")
            return
        a, b = operands
        _reply(bot, message, f"{_number(a)} + {_number(b)} = {_number(a + b)}")

    @bot.message_handler(commands=["multiply"])
    def multiply(message: Message) -> None:
        """/multiply 4 5 -> "4 * 5 = 20"."""
        operands = _operands(message)
        if operands is None:
            _reply(bot, message, "Send two numbers, e.g. /multiply 4 5")
            return
        a, b = operands
        _reply(bot, message, f"{_number(a)} * {_number(b)} = {_number(a * b)}")
''',
        commands=(("/add <a> <b>", "add two numbers"), ("/multiply <a> <b>", "multiply two numbers")),
        bug=("_number(a + b)", "_number(a + b + 1)"),
        test_imports=(),
        tests="""
def test_add_adds_two_numbers(chat):
    assert chat.send("/add 2 3") == "2 + 3 = 5"
    assert chat.send("/add 1.5 2") == "1.5 + 2 = 3.5"
    assert chat.send("/add -2 2") == "-2 + 2 = 0"


def test_multiply_multiplies_two_numbers(chat):
    assert chat.send("/multiply 4 5") == "4 * 5 = 20"
    assert chat.send("/multiply 0.5 3") == "0.5 * 3 = 1.5"


def test_calculator_explains_missing_or_bad_operands(chat):
    assert chat.send("/add 2").startswith("Send two numbers")
    assert chat.send("/add two 3").startswith("Send two numbers")
    assert chat.send("/multiply inf 3").startswith("Send two numbers")
""",
    ),
    "dice": BotFeatureCode(
        imports=("import random",),
        code='''
def register_dice(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["roll"])
    def roll(message: Message) -> None:
        """/roll [sides] -> "You rolled n (1-sides)."; sides defaults to 6."""
        try:
            sides = int(_args(message) or "6")
        except ValueError:
            sides = 0
        if not 2 <= sides <= 1000:
            _reply(bot, message, "Send /roll, or /roll <sides> with sides a whole number from 2 to 1000.")
            return
        _reply(bot, message, f"You rolled {random.randint(1, sides)} (1-{sides}).")
''',
        commands=(("/roll [sides]", "roll a die (6 sides unless you say)"),),
        bug=("random.randint(1, sides)", "random.randint(1, sides) + sides"),
        test_imports=("import re",),
        tests="""
def test_roll_stays_within_the_sides(chat):
    rolls = set()
    for _ in range(30):
        match = re.fullmatch(r"You rolled (\\d+) \\(1-6\\)\\.", chat.send("/roll 6"))
        assert match
        rolls.add(int(match.group(1)))
    assert rolls <= {1, 2, 3, 4, 5, 6}
    assert len(rolls) > 1


def test_roll_defaults_to_six_sides(chat):
    assert re.fullmatch(r"You rolled [1-6] \\(1-6\\)\\.", chat.send("/roll"))


def test_roll_explains_bad_sides(chat):
    assert chat.send("/roll abc").startswith("Send /roll")
    assert chat.send("/roll 1").startswith("Send /roll")
""",
    ),
}

_COMMON = '''
MAX_TEXT = 4096  # Telegram's limit for one message


def _reply(bot: telebot.TeleBot, message: Message, text: str) -> None:
    bot.send_message(message.chat.id, text[:MAX_TEXT])


def _args(message: Message) -> str:
    """What follows the command: "/hello Ada Lovelace" -> "Ada Lovelace"."""
    return (util.extract_arguments(message.text or "") or "").strip()


def _first_name(message: Message) -> str:
    return (message.from_user.first_name or "") if message.from_user else ""
'''

_HELP_AND_FALLBACK = '''

def register_help(bot: telebot.TeleBot) -> None:
    @bot.message_handler(commands=["start", "help"])
    def help_(message: Message) -> None:
        """/help (and /start, unless a feature greets) -> what this bot can do."""
        _reply(bot, message, HELP)

    @bot.message_handler(func=lambda message: True, content_types=["text"])
    def unknown(message: Message) -> None:
        """Anything no handler above took."""
        _reply(bot, message, "I don't know that one. Send /help to see what I can do.")


def register(bot: telebot.TeleBot) -> None:
    """The features first, in order; then /help and the answer to anything else."""
'''

_COMMON_TESTS = """
def test_help_lists_every_command(chat):
    reply = chat.send("/help")
    for usage in HELP_USAGES:
        assert usage in reply


def test_an_unknown_command_points_to_help(chat):
    assert "/help" in chat.send("/no_such_command")
"""


def render_bot_handlers(names: Sequence[str], faulty: bool) -> str:
    """handlers.py of a telegram_bot implementing exactly `names`; `faulty` plants each feature's bug."""
    features = [BOT_FEATURES[name] for name in names]
    imports = sorted({line for feature in features for line in feature.imports})
    help_lines = [f"{usage} - {does}" for feature in features for usage, does in feature.commands]
    help_lines.append("/help - this list")
    parts = [
        f'"""Bot commands: {", ".join(names)}. Written by the scripted developer agent."""\n\n'
        "from __future__ import annotations\n\n",
        *(line + "\n" for line in imports if line.startswith("import ")),
        *(line + "\n" for line in imports if line.startswith("from ")),
        "\nimport telebot\nfrom telebot import util\nfrom telebot.types import Message\n\n",
        f"HELP = {'I can do this:' + chr(10) + chr(10).join(help_lines)!r}\n",
        _COMMON,
    ]
    for feature in features:
        code = feature.code
        if faulty:
            correct, wrong = feature.bug
            assert correct in code, correct
            code = code.replace(correct, wrong, 1)
        parts.append("\n" + code)
    parts.append(_HELP_AND_FALLBACK)
    parts.extend(f"    register_{name}(bot)\n" for name in names)
    parts.append("    register_help(bot)\n")
    return "".join(parts)


def render_bot_tests(names: Sequence[str]) -> str:
    """tests/test_features.py of a telegram_bot: each feature's tests, through the `chat` fixture."""
    features = [BOT_FEATURES[name] for name in names]
    imports = sorted({line for feature in features for line in feature.test_imports if line.startswith("import ")})
    imports += sorted({line for feature in features for line in feature.test_imports if line.startswith("from ")})
    usages = [usage.split()[0] for feature in features for usage, _ in feature.commands]
    header = (
        f'"""Feature tests: {", ".join(names)}, talking to the running bot (conftest.chat)."""\n\n'
        "from __future__ import annotations\n"
    )
    if imports:
        header += "\n" + "".join(line + "\n" for line in imports)
    header += f"\nHELP_USAGES = {usages!r}\n\n"
    return header + _COMMON_TESTS + "".join("\n" + feature.tests for feature in features)
