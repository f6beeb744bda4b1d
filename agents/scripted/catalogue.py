"""The scripted Architect: maps a plain description onto a small catalogue of features, built as a
web service or, when the description asks for one ("a telegram bot that ..."), a Telegram bot.

No LLM and no guessing. The description is split into words and filler words ("a", "web",
"service", "please", ...) are dropped. A feature is selected when one of its keywords appears
("greets", "echo", "dice", ...) or one of its key pairs appears as neighbouring words ("add"
then "numbers", with only filler between). Keywords are unambiguous: a word that could mean
two features ("add" notes or numbers) is only ever vocabulary. A selected feature also
understands its vocabulary ("name", "text", "sides", ...). Every word must be understood by a
selected feature; otherwise planning is refused with ScriptedPlanError naming the words that
were not understood: the scripted architect never builds a service that ignores part of what
was asked. Anything outside the catalogue needs an LLM backend for the architect role.

The kind: a description with a word of BOT_WORDS ("telegram", "bot", "chat", ...) plans a
telegram_bot (the same features as chat commands, checked by conversation checks, with the
TELEGRAM_BOT_TOKEN variable filled by the Deployer); in a bot's description the words of
BOT_VOCABULARY ("command", "start", "messages", ...) are understood too. Any other description
plans a web_service.

The developer side (agents/scripted/agent.py) implements each feature by its `name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from projects.specs import SLUG, AcceptanceCheck, ConversationCheck, EnvVar, Feature, ProjectSpec

SLUG_MAX = 42  # projects.specs.SLUG allows 3 to 42 characters


class ScriptedPlanError(ValueError):
    """The description asks for something outside the scripted catalogue."""


@dataclass(frozen=True)
class CatalogueFeature:
    """One feature the scripted agents can plan, implement and test."""

    name: str  # Feature.name in the spec
    title: str  # used for the project name and slug, e.g. "Greeter"
    does: str  # completes "A web service that ...", e.g. "greets people by name"
    summary: str  # the exact HTTP contract, precise enough for any developer agent
    example: str  # a description the catalogue understands
    keywords: frozenset[str]  # words that select the feature, matched exactly
    vocabulary: frozenset[str]  # further words it understands once selected, with inflections
    checks: tuple[AcceptanceCheck, ...]
    # The same feature in a Telegram bot (kind telegram_bot): its chat contract, an example, checks.
    bot_summary: str
    bot_example: str
    conversation: tuple[ConversationCheck, ...]
    # Neighbouring words that select the feature together, in either order, with inflections.
    key_pairs: tuple[tuple[str, str], ...] = ()

    def understands(self, word: str) -> bool:
        return word in self.keywords or bool(_forms(word) & self.vocabulary)

    def selected_by(self, tokens: list[str]) -> bool:
        if any(token in self.keywords for token in tokens):
            return True
        return any(
            (first in _forms(a) and second in _forms(b)) or (first in _forms(b) and second in _forms(a))
            for a, b in zip(tokens, tokens[1:], strict=False)
            for first, second in self.key_pairs
        )


def _words(*text: str) -> frozenset[str]:
    return frozenset(" ".join(text).split())


def _say(name: str, send: str, contains: str) -> ConversationCheck:
    return ConversationCheck(name=name, send=send, expect_contains=contains)


def _check(
    name: str, path: str, contains: str, *, method: str = "GET", body: dict | None = None, status: int = 200
) -> AcceptanceCheck:
    return AcceptanceCheck(
        name=name, method=method, path=path, body=body, expect_status=status, expect_contains=contains
    )


CATALOGUE: tuple[CatalogueFeature, ...] = (
    CatalogueFeature(
        name="greet",
        title="Greeter",
        does="greets people by name",
        summary='GET /greet?name=Ada -> 200 {"message": "Hello, Ada!"}; name defaults to "world".',
        example="a web service that greets people by name",
        keywords=_words(
            "greet greets greeted greeting greetings greeter greeters hello welcome",
            "welcomes welcoming salute salutes",
        ),
        vocabulary=_words(
            "name names named world hi hey say says saying message messages personal",
            "personalised personalized friendly politely nicely",
        ),
        bot_summary='/start -> a greeting starting "Hello, <first name>!" that mentions /hello; /hello Ada -> '
        '"Hello, Ada!"; /hello alone greets the sender by first name.',
        bot_example="a telegram bot that greets people by name",
        conversation=(_say("greet: /start", "/start", "Hello"), _say("greet: /hello Ada", "/hello Ada", "Hello, Ada!")),
        checks=(_check("greet: GET /greet?name=Ada", "/greet?name=Ada", "Hello, Ada!"),),
    ),
    CatalogueFeature(
        name="echo",
        title="Echo",
        does="echoes text back",
        summary='GET /echo?text=hi -> 200 {"text": "hi"} (text defaults to ""); '
        "POST /echo with a JSON body -> 200 with the same JSON; no body -> 400.",
        example="a service that echoes back whatever text it gets",
        keywords=_words(
            "echo echoes echoed echoing echos repeat repeats repeating repeated", "parrot parrots mirror mirrors"
        ),
        vocabulary=_words(
            "back text texts message messages input inputs word words string",
            "strings whatever same sent send sends say says said body hi",
        ),
        bot_summary='/echo hi there -> "hi there"; any text that is not a command -> the same text; /echo '
        "alone -> how to use it.",
        bot_example="a telegram bot that echoes back whatever I write",
        conversation=(
            _say("echo: /echo hi there", "/echo hi there", "hi there"),
            _say("echo: plain text", "parrot test", "parrot test"),
        ),
        checks=(
            _check("echo: GET /echo?text=hi", "/echo?text=hi", "hi"),
            _check("echo: POST /echo", "/echo", "hi", method="POST", body={"text": "hi"}),
        ),
    ),
    CatalogueFeature(
        name="time",
        title="Clock",
        does="tells the current UTC time",
        summary='GET /time -> 200 {"utc": "<ISO-8601 timestamp with +00:00 offset>"}, '
        'e.g. {"utc": "2024-05-01T12:00:00+00:00"}.',
        example="a service that tells the current time",
        keywords=_words("time clock clocks utc timestamp timestamps date dates datetime"),
        vocabulary=_words("current currently now today iso 8601 format formatted zone timezone", "gmt exact precise"),
        bot_summary='/time -> "Current UTC time: <ISO-8601 timestamp with +00:00 offset>", e.g. '
        '"Current UTC time: 2024-05-01T12:00:00+00:00".',
        bot_example="a telegram bot that tells the current time",
        conversation=(_say("time: /time", "/time", "+00:00"),),
        checks=(_check("time: GET /time", "/time", "utc"),),
    ),
    CatalogueFeature(
        name="counter",
        title="Counter",
        does="keeps an in-memory counter",
        summary='POST /counter -> 200 {"count": n} after adding one; GET /counter -> 200 '
        '{"count": n}; starts at 0, kept in memory.',
        example="a web service with a counter I can increment",
        keywords=_words(
            "counter counters count counts counting counted increment increments",
            "incrementing incremented tally tallies clicker",
        ),
        vocabulary=_words(
            "increase increases increasing add adds adding number numbers value",
            "current total visit visits visitor visitors click clicks hit hits",
            "memory stored keep keeps keeping track tracks tracking times",
        ),
        bot_summary='/count -> adds one to the chat\'s counter and answers "Count: n"; /counter -> "Count: n" '
        "without changing it; each chat's counter starts at 0, kept in memory.",
        bot_example="a telegram bot with a counter I can increment",
        conversation=(_say("counter: /count", "/count", "Count: "), _say("counter: /counter", "/counter", "Count: ")),
        checks=(
            _check("counter: POST /counter", "/counter", "count", method="POST"),
            _check("counter: GET /counter", "/counter", "count"),
        ),
    ),
    CatalogueFeature(
        name="notes",
        title="Notes",
        does="keeps short notes in memory",
        summary='POST /notes {"text": "buy milk"} -> 201 {"id": 1, "text": "buy milk"} (missing '
        'or empty text -> 400); GET /notes -> 200 {"notes": [{"id", "text"}, ...]} oldest '
        "first; kept in memory.",
        example="a service where I can add notes and list them",
        keywords=_words("note notes notepad notebook memo memos jot jots"),
        vocabulary=_words(
            "text texts write writes writing written add adds adding save saves",
            "saving store stores storing stored keep keeps keeping list lists",
            "listing read reads memory take takes taking remember remembers",
            "retrieve fetch down short id ids",
        ),
        bot_summary='/note buy milk -> "Saved note n: buy milk" (no text -> how to use it); /notes -> the '
        'chat\'s notes, one "n. text" line each, oldest first, or "No notes yet."; kept in memory per chat.',
        bot_example="a telegram bot where I can add notes and list them",
        conversation=(
            _say("notes: /note buy milk", "/note buy milk", "buy milk"),
            _say("notes: /notes", "/notes", "buy milk"),
        ),
        checks=(
            _check("notes: POST /notes", "/notes", "buy milk", method="POST", body={"text": "buy milk"}, status=201),
            _check("notes: GET /notes", "/notes", "buy milk"),
        ),
    ),
    CatalogueFeature(
        name="calculator",
        title="Calculator",
        does="adds and multiplies numbers",
        summary='GET /add?a=2&b=3 -> 200 {"result": 5}; GET /multiply?a=4&b=5 -> 200 '
        '{"result": 20}; whole results as integers; a or b missing or not a finite '
        "number -> 400.",
        example="a calculator service that adds and multiplies two numbers",
        keywords=_words(
            "calculator calculators calculate calculates calculating calculation",
            "calculations calc addition sum sums summing plus multiply multiplies",
            "multiplying multiplication product products arithmetic math maths",
        ),
        vocabulary=_words("add number result together operation integer decimal value times"),
        key_pairs=(("add", "number"), ("add", "integer"), ("add", "decimal"), ("add", "value")),
        bot_summary='/add 2 3 -> "2 + 3 = 5"; /multiply 4 5 -> "4 * 5 = 20"; whole results as integers; '
        "operands missing or not finite numbers -> how to use it.",
        bot_example="a telegram bot that adds and multiplies two numbers",
        conversation=(
            _say("calculator: /add 2 3", "/add 2 3", "= 5"),
            _say("calculator: /multiply 4 5", "/multiply 4 5", "= 20"),
        ),
        checks=(
            _check("calculator: GET /add?a=2&b=3", "/add?a=2&b=3", "5"),
            _check("calculator: GET /multiply?a=4&b=5", "/multiply?a=4&b=5", "20"),
        ),
    ),
    CatalogueFeature(
        name="dice",
        title="Dice",
        does="rolls dice",
        summary='GET /roll?sides=6 -> 200 {"sides": 6, "roll": n} with 1 <= n <= sides; sides '
        "defaults to 6; sides not a whole number from 2 to 1000 -> 400.",
        example="a service that rolls a six-sided die",
        keywords=_words("dice die roll rolls rolling rolled roller d6 d20"),
        vocabulary=_words(
            "random randomly number numbers side sides sided six twenty game games", "throw throws throwing board"
        ),
        bot_summary='/roll -> "You rolled n (1-6)." with 1 <= n <= 6; /roll 20 -> "You rolled n (1-20)."; sides '
        "not a whole number from 2 to 1000 -> how to use it.",
        bot_example="a telegram bot that rolls dice",
        conversation=(_say("dice: /roll 6", "/roll 6", "You rolled"),),
        checks=(_check("dice: GET /roll?sides=6", "/roll?sides=6", "roll"),),
    ),
)

HEALTH_CHECK = _check("health: GET /health", "/health", "ok")

# Words that say nothing about what the service does. Matched exactly (no inflection), so that
# e.g. "news" is never mistaken for the filler word "new".
FILLER = _words(
    # determiners, pronouns
    "a an the this that these those some any each every all another other its it they them",
    "their there here my our your me us we you he she his her one ones two three something",
    "anything everything someone anyone everyone everybody people person persons user users",
    "visitor visitors client clients caller callers",
    # prepositions, conjunctions, question words
    "for with to of by in on at from into onto as about via through over under per without",
    "within up out off and or but also then so if when whenever where which who whom whose",
    "what how while like just only",
    # auxiliaries
    "is are was were be been being am can could should would will shall may might must do",
    "does did has have had having get gets",
    # asking for something
    "please make makes build builds create creates want wants need needs let lets allow",
    "allows able i'd i'm",
    # size and tone
    "simple simply small tiny little basic minimal quick new nice cool easy super very really",
    "thing things tool tools kind sort",
    # the platform's own vocabulary
    "web service services api apis app apps application http https server servers endpoint",
    "endpoints route routes json rest restful backend microservice request requests response",
    "responses url urls query parameter parameters param params path called using use uses",
    "online internet website websites site sites webpage python program running",
    # generic verbs of answering
    "return returns returning respond responds responding reply replies answer answers give",
    "gives show shows display displays tell tells print prints output outputs provide",
    "provides offer offers serve serves handle handles support supports accept accepts see",
    "check checks",
)

# Words that mean the person wants a chat bot: they choose the kind telegram_bot.
BOT_WORDS = _words("telegram bot bots chatbot chatbots chat chats")
# Words any bot description may use about chatting itself, understood only in a bot's description.
BOT_VOCABULARY = _words(
    "command commands slash start help message messages messaging send sends sent write writes",
    "writing wrote type types typed talk talks talking conversation conversations group groups",
    "private dm dms",
)
BOT_TOKEN_ENV = EnvVar(
    name="TELEGRAM_BOT_TOKEN",
    source="bot_token",
    description="The bot's token: one from the factory's bot pool, or the person's own.",
)

LLM_HINT = (
    "Anything else needs an LLM: configure an LLM backend for the architect role "
    "(admin: Agent configs, role architect, backend claude_code or openai_compatible)."
)


def _catalogue_help() -> str:
    width = max(len(feature.name) for feature in CATALOGUE)
    lines = ["The scripted architect knows these web-service features (any combination):"]
    for feature in CATALOGUE:
        lines.append(f'  {feature.name:<{width}}  {feature.does}: {feature.summary} Example: "{feature.example}".')
    lines.append(
        "The same features make a Telegram bot (kind telegram_bot) when the description says so "
        '("telegram", "bot", "chat"):'
    )
    for feature in CATALOGUE:
        lines.append(
            f'  {feature.name:<{width}}  {feature.does}: {feature.bot_summary} Example: "{feature.bot_example}".'
        )
    lines.append(LLM_HINT)
    return "\n".join(lines)


CATALOGUE_HELP = _catalogue_help()


def plan(description: str) -> ProjectSpec:
    """Plan a web service or a Telegram bot from `description`, or raise ScriptedPlanError saying why not."""
    if not description.strip():
        raise ScriptedPlanError(f"The description is empty.\n{CATALOGUE_HELP}")
    tokens = _content_tokens(description)
    bot = any(token in BOT_WORDS for token in tokens)
    if bot:
        tokens = [token for token in tokens if token not in BOT_WORDS and token not in BOT_VOCABULARY]
    selected = [feature for feature in CATALOGUE if feature.selected_by(tokens)]
    unknown: list[str] = []
    for token in tokens:
        if token not in unknown and not any(feature.understands(token) for feature in selected):
            unknown.append(token)
    if not selected or unknown:
        raise ScriptedPlanError(_refusal(unknown, bot))
    return _bot_spec(selected) if bot else _spec(selected)


# Words a change request may use about changing itself ("also add dice too"): understood in a
# change, never selecting a feature ("add" still pairs with "numbers" for the calculator).
CHANGE_WORDS = _words("add adds adding added feature features too extend extends extended plus more")


def amend(spec: ProjectSpec, change: str) -> ProjectSpec:
    """The project's spec with the catalogue features ``change`` names added ("also roll dice"):
    its name, slug, kind, features and checks are kept, the new features' checks are added. Raise
    ScriptedPlanError when the change names no feature the project lacks, or has words it does not
    understand (the scripted architect never ignores part of a request)."""
    if not change.strip():
        raise ScriptedPlanError(f"The change is empty.\n{CATALOGUE_HELP}")
    bot = spec.kind == "telegram_bot"
    tokens = _content_tokens(change)
    if bot:
        tokens = [token for token in tokens if token not in BOT_WORDS and token not in BOT_VOCABULARY]
    by_name = {feature.name: feature for feature in CATALOGUE}
    have = {feature.name for feature in spec.features}
    selected = [feature for feature in CATALOGUE if feature.selected_by(tokens)]
    known = selected + [by_name[name] for name in have if name in by_name]
    unknown: list[str] = []
    for token in tokens:
        if token in unknown or token in CHANGE_WORDS:
            continue
        if not any(feature.understands(token) for feature in known):
            unknown.append(token)
    new = [feature for feature in selected if feature.name not in have]
    if unknown or not new:
        if unknown:
            why = "The scripted architect did not understand: " + ", ".join(f'"{w}"' for w in unknown) + "."
        elif selected:
            why = "The project already does " + _join_and([f.name for f in selected]) + ": nothing new to add."
        else:
            why = "The scripted architect found no feature it knows in the change."
        raise ScriptedPlanError(f"{why}\nA change adds features of the catalogue to the project.\n{CATALOGUE_HELP}")
    features = [*spec.features]
    acceptance, conversation = [*spec.acceptance], [*spec.conversation]
    for feature in new:
        features.append(Feature(name=feature.name, summary=feature.bot_summary if bot else feature.summary))
        if bot:
            conversation.extend(feature.conversation)
        else:
            acceptance.extend(feature.checks)
    summary = spec.summary
    if all(f.name in by_name for f in features):  # every feature is the catalogue's: say them all
        does = _join_and([by_name[f.name].does for f in features])
        summary = f"A {'Telegram bot' if bot else 'web service'} that {does}."
    return spec.model_copy(
        update={"features": features, "acceptance": acceptance, "conversation": conversation, "summary": summary}
    )


def _content_tokens(description: str) -> list[str]:
    """The words of `description` that say what the service does, in order: no filler, no numbers."""
    text = description.lower().replace("\u2019", "'")
    tokens = []
    for word in re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text):
        word = word.removesuffix("'s")
        if len(word) > 1 and not word.isdigit() and word not in FILLER:
            tokens.append(word)
    return tokens


def _forms(word: str) -> set[str]:
    """The word and its likely stems, so "greets", "greeting" and "noted" meet their features."""
    forms = {word}
    for suffix in ("s", "es", "ing", "ed", "d"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 2:
            forms.add(word[: -len(suffix)])
    return forms


def _refusal(unknown: list[str], bot: bool) -> str:
    parts = []
    if unknown:
        parts.append("The scripted architect did not understand: " + ", ".join(f'"{word}"' for word in unknown) + ".")
    else:
        parts.append("The scripted architect found no feature it knows in the description.")
    if bot:
        parts.append("It read the description as a Telegram bot (kind telegram_bot).")
    parts.append(CATALOGUE_HELP)
    return "\n".join(parts)


def _spec(ordered: list[CatalogueFeature]) -> ProjectSpec:
    titles = [feature.title for feature in ordered]
    return ProjectSpec(
        name=_join_and(titles),
        slug=_slug(titles),
        kind="web_service",
        summary=f"A web service that {_join_and([feature.does for feature in ordered])}.",
        features=[Feature(name=feature.name, summary=feature.summary) for feature in ordered],
        env=[],
        acceptance=[HEALTH_CHECK, *(check for feature in ordered for check in feature.checks)],
    )


def _bot_spec(ordered: list[CatalogueFeature]) -> ProjectSpec:
    """A telegram_bot: conversation checks instead of HTTP ones, and the token as its one variable."""
    titles = [feature.title for feature in ordered]
    return ProjectSpec(
        name=f"{_join_and(titles)} Bot",
        slug=_slug([*titles, "Bot"], keep_last=True),
        kind="telegram_bot",
        summary=f"A Telegram bot that {_join_and([feature.does for feature in ordered])}.",
        features=[Feature(name=feature.name, summary=feature.bot_summary) for feature in ordered],
        env=[BOT_TOKEN_ENV],
        acceptance=[],
        conversation=[check for feature in ordered for check in feature.conversation],
    )


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _slug(titles: list[str], keep_last: bool = False) -> str:
    """Titles joined by dashes, dropping trailing ones that would not fit projects.specs.SLUG
    (``keep_last``: the last title always stays, e.g. "bot")."""
    last = f"-{titles[-1].lower()}" if keep_last else ""
    slug = ""
    for title in titles[:-1] if keep_last else titles:
        candidate = f"{slug}-{title.lower()}" if slug else title.lower()
        if len(candidate) + len(last) > SLUG_MAX:
            break
        slug = candidate
    slug += last
    assert re.fullmatch(SLUG, slug), slug
    return slug
