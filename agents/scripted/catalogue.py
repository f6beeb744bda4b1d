"""The scripted Architect: maps a plain description onto a small catalogue of web-service features.

No LLM and no guessing. The description is split into words and filler words ("a", "web",
"service", "please", ...) are dropped. A feature is selected when one of its keywords appears
("greets", "echo", "dice", ...) or one of its key pairs appears as neighbouring words ("add"
then "numbers", with only filler between). Keywords are unambiguous: a word that could mean
two features ("add" notes or numbers) is only ever vocabulary. A selected feature also
understands its vocabulary ("name", "text", "sides", ...). Every word must be understood by a
selected feature; otherwise planning is refused with ScriptedPlanError naming the words that
were not understood: the scripted architect never builds a service that ignores part of what
was asked. Anything outside the catalogue needs an LLM backend for the architect role.

The developer side (agents/scripted/agent.py) implements each feature by its `name`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from projects.specs import SLUG, AcceptanceCheck, Feature, ProjectSpec

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

# Words that mean the person wants a chat bot; the scripted catalogue builds web services only.
BOT_WORDS = _words("telegram bot bots chatbot chatbots")

LLM_HINT = (
    "Anything else needs an LLM: configure an LLM backend for the architect role "
    "(admin: Agent configs, role architect, backend claude_code or openai_compatible)."
)


def _catalogue_help() -> str:
    width = max(len(feature.name) for feature in CATALOGUE)
    lines = ["The scripted architect knows these web-service features (any combination):"]
    for feature in CATALOGUE:
        lines.append(f'  {feature.name:<{width}}  {feature.does}: {feature.summary} Example: "{feature.example}".')
    lines.append(LLM_HINT)
    return "\n".join(lines)


CATALOGUE_HELP = _catalogue_help()


def plan(description: str) -> ProjectSpec:
    """Plan a web service from `description`, or raise ScriptedPlanError saying why not."""
    if not description.strip():
        raise ScriptedPlanError(f"The description is empty.\n{CATALOGUE_HELP}")
    tokens = _content_tokens(description)
    selected = [feature for feature in CATALOGUE if feature.selected_by(tokens)]
    unknown: list[str] = []
    for token in tokens:
        if token not in unknown and not any(feature.understands(token) for feature in selected):
            unknown.append(token)
    if not selected or unknown:
        raise ScriptedPlanError(_refusal(description, unknown))
    return _spec(selected)


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


def _refusal(description: str, unknown: list[str]) -> str:
    parts = []
    if unknown:
        parts.append("The scripted architect did not understand: " + ", ".join(f'"{word}"' for word in unknown) + ".")
    else:
        parts.append("The scripted architect found no feature it knows in the description.")
    if BOT_WORDS & set(re.findall(r"[a-z]+", description.lower())):
        parts.append(
            "It builds web services only; a Telegram bot (kind telegram_bot) is not in the scripted catalogue."
        )
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


def _join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _slug(titles: list[str]) -> str:
    """Titles joined by dashes, dropping trailing ones that would not fit projects.specs.SLUG."""
    slug = ""
    for title in titles:
        candidate = f"{slug}-{title.lower()}" if slug else title.lower()
        if len(candidate) > SLUG_MAX:
            break
        slug = candidate
    assert re.fullmatch(SLUG, slug), slug
    return slug
