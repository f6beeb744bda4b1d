"""The scripted Developer: implements a spec's features with canned code, no LLM.

Runs inside the project's git working copy (scaffolded from templates/<kind>: web_service or
telegram_bot), with only the standard library and git:

    python -m agents.scripted.agent develop --spec spec.json --iteration 1 --fail-times 0 \\
        --branch run-7 --remote origin

It writes handlers.py (the spec's features, nothing else) and tests/test_features.py (real
tests through the `client` fixture of a web service, or the `chat` fixture of a bot: see
bot_features.py), commits if anything changed, pushes HEAD to the branch,
and prints one line of JSON on stdout: the AgentResult, e.g.
{"status": "complete", "commit": "<sha>", "summary": "..."}. Failures print
{"status": "failed", "summary": "..."} and exit 1. Progress goes to stderr.

While iteration <= fail-times it writes a deliberately wrong implementation (and says so in the
summary), so the pipeline's test-and-repair loop can be exercised for real. The output depends
only on the spec's features and whether this iteration is a faulty one, so a rerun with the
same inputs changes nothing and makes no second commit.

Git identity comes from -c user.name/user.email on each command (GIT_AUTHOR_* and
GIT_COMMITTER_* in the environment take precedence), so no global git config is needed.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from agents.scripted.bot_features import BOT_FEATURES, render_bot_handlers, render_bot_tests

GIT_NAME = "Scripted Developer"
GIT_EMAIL = "scripted-developer@service-factory.invalid"


class AgentError(Exception):
    """Stops the agent; the message becomes the summary of a failed AgentResult."""


@dataclass(frozen=True)
class FeatureCode:
    """The canned implementation of one catalogue feature (see agents/scripted/catalogue.py)."""

    imports: tuple[str, ...]  # import lines handlers.py needs
    code: str  # handler functions (and their in-memory state)
    routes: tuple[tuple[str, str, str], ...]  # (method, path, function name)
    bug: tuple[str, str]  # (correct snippet, wrong snippet): the deliberate fault
    test_imports: tuple[str, ...]
    tests: str


FEATURES: dict[str, FeatureCode] = {
    "greet": FeatureCode(
        imports=(),
        code='''
def greet(request: Request) -> tuple[int, Any]:
    """GET /greet?name=Ada -> {"message": "Hello, Ada!"}; the name defaults to "world"."""
    name = request.query.get("name") or "world"
    return 200, {"message": f"Hello, {name}!"}
''',
        routes=(("GET", "/greet", "greet"),),
        bug=('f"Hello, {name}!"', 'f"Hallo, {name}!"'),
        test_imports=(),
        tests="""
def test_greet_uses_the_given_name(client):
    assert client.get("/greet?name=Ada") == (200, {"message": "Hello, Ada!"})


def test_greet_decodes_the_name(client):
    assert client.get("/greet?name=Ada%20Lovelace") == (200, {"message": "Hello, Ada Lovelace!"})


def test_greet_defaults_to_world(client):
    assert client.get("/greet") == (200, {"message": "Hello, world!"})
""",
    ),
    "echo": FeatureCode(
        imports=(),
        code='''
def echo_text(request: Request) -> tuple[int, Any]:
    """GET /echo?text=hi -> {"text": "hi"}; the text defaults to ""."""
    return 200, {"text": request.query.get("text", "")}


def echo_json(request: Request) -> tuple[int, Any]:
    """POST /echo with a JSON body -> the same JSON; no body -> 400."""
    if request.json is None:
        return 400, {"error": "send a JSON body to echo"}
    return 200, request.json
''',
        routes=(("GET", "/echo", "echo_text"), ("POST", "/echo", "echo_json")),
        bug=('{"text": request.query.get("text", "")}', '{"text": request.query.get("text", "").upper()}'),
        test_imports=(),
        tests="""
def test_echo_returns_the_text(client):
    assert client.get("/echo?text=hi") == (200, {"text": "hi"})


def test_echo_without_text_is_empty(client):
    assert client.get("/echo") == (200, {"text": ""})


def test_echo_post_returns_the_same_json(client):
    body = {"text": "hi", "items": [1, 2, {"nested": True}]}
    assert client.post("/echo", json=body) == (200, body)


def test_echo_post_without_body_is_a_400(client):
    assert client.post("/echo")[0] == 400
""",
    ),
    "time": FeatureCode(
        imports=("from datetime import datetime, timezone",),
        code='''
def current_time(request: Request) -> tuple[int, Any]:
    """GET /time -> {"utc": "2024-05-01T12:00:00+00:00"}: ISO-8601, UTC."""
    return 200, {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
''',
        routes=(("GET", "/time", "current_time"),),
        bug=("datetime.now(timezone.utc)", "datetime.now()"),
        test_imports=("from datetime import datetime, timedelta, timezone",),
        tests="""
def test_time_is_the_current_utc_time_in_iso_8601(client):
    status, body = client.get("/time")
    assert status == 200
    stamp = datetime.fromisoformat(body["utc"])
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(timezone.utc) - stamp) < timedelta(minutes=1)
""",
    ),
    "counter": FeatureCode(
        imports=("import threading",),
        code='''
_count_lock = threading.Lock()
_count = 0


def counter_get(request: Request) -> tuple[int, Any]:
    """GET /counter -> {"count": n}."""
    with _count_lock:
        return 200, {"count": _count}


def counter_increment(request: Request) -> tuple[int, Any]:
    """POST /counter -> adds one and answers {"count": n} with the new value."""
    global _count
    with _count_lock:
        _count += 1
        return 200, {"count": _count}
''',
        routes=(("GET", "/counter", "counter_get"), ("POST", "/counter", "counter_increment")),
        bug=("_count += 1", "_count += 2"),
        test_imports=(),
        tests="""
def test_counter_post_adds_one_and_get_reads_it(client):
    status, body = client.get("/counter")
    assert status == 200
    before = body["count"]
    assert client.post("/counter") == (200, {"count": before + 1})
    assert client.post("/counter") == (200, {"count": before + 2})
    assert client.get("/counter") == (200, {"count": before + 2})
""",
    ),
    "notes": FeatureCode(
        imports=("import threading",),
        code='''
_notes_lock = threading.Lock()
_notes: list[dict[str, Any]] = []


def notes_list(request: Request) -> tuple[int, Any]:
    """GET /notes -> {"notes": [{"id": 1, "text": "..."}, ...]}, oldest first."""
    with _notes_lock:
        return 200, {"notes": list(_notes)}


def notes_create(request: Request) -> tuple[int, Any]:
    """POST /notes {"text": "buy milk"} -> 201 {"id": n, "text": "buy milk"}."""
    body = request.json
    text = body.get("text") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        return 400, {"error": 'send a JSON body like {"text": "buy milk"}'}
    with _notes_lock:
        note = {"id": len(_notes) + 1, "text": text}
        _notes.append(note)
    return 201, note
''',
        routes=(("GET", "/notes", "notes_list"), ("POST", "/notes", "notes_create")),
        bug=("return 201, note", "return 200, note"),
        test_imports=(),
        tests="""
def test_notes_post_creates_a_note_that_get_lists(client):
    status, note = client.post("/notes", json={"text": "buy milk"})
    assert status == 201
    assert note["text"] == "buy milk"
    assert isinstance(note["id"], int)
    status, body = client.get("/notes")
    assert status == 200
    assert note in body["notes"]


def test_notes_get_keeps_the_order_of_creation(client):
    first = client.post("/notes", json={"text": "first"})[1]
    second = client.post("/notes", json={"text": "second"})[1]
    notes = client.get("/notes")[1]["notes"]
    assert notes.index(first) < notes.index(second)


def test_notes_without_text_is_a_400(client):
    assert client.post("/notes", json={"title": "no text"})[0] == 400
    assert client.post("/notes", json={"text": "  "})[0] == 400
    assert client.post("/notes")[0] == 400
""",
    ),
    "calculator": FeatureCode(
        imports=("import math",),
        code='''
def _operands(request: Request) -> tuple[float, float] | None:
    """The finite numbers in ?a=...&b=..., or None."""
    try:
        a, b = float(request.query["a"]), float(request.query["b"])
    except (KeyError, ValueError):
        return None
    return (a, b) if math.isfinite(a) and math.isfinite(b) else None


def _number(value: float) -> float | int:
    return int(value) if value.is_integer() else value


def add(request: Request) -> tuple[int, Any]:
    """GET /add?a=2&b=3 -> {"result": 5}."""
    operands = _operands(request)
    if operands is None:
        return 400, {"error": "a and b must be numbers"}
    return 200, {"result": _number(operands[0] + operands[1])}


def multiply(request: Request) -> tuple[int, Any]:
    """GET /multiply?a=4&b=5 -> {"result": 20}."""
    operands = _operands(request)
    if operands is None:
        return 400, {"error": "a and b must be numbers"}
    return 200, {"result": _number(operands[0] * operands[1])}
''',
        routes=(("GET", "/add", "add"), ("GET", "/multiply", "multiply")),
        bug=("_number(operands[0] + operands[1])", "_number(operands[0] + operands[1] + 1)"),
        test_imports=(),
        tests="""
def test_add_adds_two_numbers(client):
    assert client.get("/add?a=2&b=3") == (200, {"result": 5})
    assert client.get("/add?a=1.5&b=2") == (200, {"result": 3.5})
    assert client.get("/add?a=-2&b=2") == (200, {"result": 0})


def test_multiply_multiplies_two_numbers(client):
    assert client.get("/multiply?a=4&b=5") == (200, {"result": 20})
    assert client.get("/multiply?a=0.5&b=3") == (200, {"result": 1.5})


def test_calculator_rejects_missing_or_bad_operands(client):
    assert client.get("/add?a=2")[0] == 400
    assert client.get("/add?a=two&b=3")[0] == 400
    assert client.get("/multiply?a=inf&b=3")[0] == 400
""",
    ),
    "dice": FeatureCode(
        imports=("import random",),
        code='''
def roll(request: Request) -> tuple[int, Any]:
    """GET /roll?sides=6 -> {"sides": 6, "roll": n}, 1 <= n <= sides; sides defaults to 6."""
    try:
        sides = int(request.query.get("sides", "6"))
    except ValueError:
        return 400, {"error": "sides must be a whole number"}
    if not 2 <= sides <= 1000:
        return 400, {"error": "sides must be from 2 to 1000"}
    return 200, {"sides": sides, "roll": random.randint(1, sides)}
''',
        routes=(("GET", "/roll", "roll"),),
        bug=("random.randint(1, sides)", "random.randint(1, sides) + sides"),
        test_imports=(),
        tests="""
def test_roll_stays_within_the_sides(client):
    rolls = set()
    for _ in range(60):
        status, body = client.get("/roll?sides=6")
        assert status == 200
        assert body["sides"] == 6
        rolls.add(body["roll"])
    assert rolls <= {1, 2, 3, 4, 5, 6}
    assert len(rolls) > 1


def test_roll_defaults_to_six_sides(client):
    status, body = client.get("/roll")
    assert status == 200
    assert body["sides"] == 6 and 1 <= body["roll"] <= 6


def test_roll_rejects_bad_sides(client):
    assert client.get("/roll?sides=abc")[0] == 400
    assert client.get("/roll?sides=1")[0] == 400
""",
    ),
}


def render_handlers(names: Sequence[str], faulty: bool) -> str:
    """handlers.py implementing exactly `names`; `faulty` plants each feature's bug."""
    features = [FEATURES[name] for name in names]
    imports = sorted(
        {line for feature in features for line in feature.imports}, key=lambda line: (line.startswith("from"), line)
    )
    parts = [
        f'"""Feature routes: {", ".join(names)}. Written by the scripted developer agent."""\n'
        "from __future__ import annotations\n\n",
        *(line + "\n" for line in imports),
        "from typing import TYPE_CHECKING, Any, Callable\n\nif TYPE_CHECKING:\n    from app import Request\n",
    ]
    for feature in features:
        code = feature.code
        if faulty:
            correct, wrong = feature.bug
            assert correct in code, correct
            code = code.replace(correct, wrong, 1)
        parts.append("\n" + code)
    table = "".join(
        f'    ("{method}", "{path}"): {function},\n'
        for feature in features
        for method, path, function in feature.routes
    )
    parts.append(f"\n\nROUTES: dict[tuple[str, str], Callable[[Request], tuple[int, Any]]] = {{\n{table}}}\n")
    return "".join(parts)


def render_tests(names: Sequence[str]) -> str:
    """tests/test_features.py: each feature's tests, through the conftest `client` fixture."""
    features = [FEATURES[name] for name in names]
    imports = sorted({line for feature in features for line in feature.test_imports})
    header = (
        f'"""Feature tests: {", ".join(names)}, through a real server (conftest.client)."""\n'
        "from __future__ import annotations\n"
    )
    if imports:
        header += "\n" + "".join(line + "\n" for line in imports)
    return header + "".join("\n" + feature.tests for feature in features)


KINDS = ("web_service", "telegram_bot")


def feature_names(spec: Any) -> list[str]:
    """The spec's feature names in order, checked against what this agent can implement."""
    if not isinstance(spec, dict) or not isinstance(spec.get("features"), list):
        raise AgentError("the spec is not a ProjectSpec: it has no features list")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise AgentError(f"the scripted developer builds {' and '.join(KINDS)} projects only, not {kind!r}")
    known = BOT_FEATURES if kind == "telegram_bot" else FEATURES
    names: list[str] = []
    for feature in spec["features"]:
        name = feature.get("name") if isinstance(feature, dict) else None
        if name not in known:
            raise AgentError(
                f"unknown feature {name!r}: the scripted developer implements "
                f"only {', '.join(known)}; anything else needs an LLM backend "
                "for the developer role"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise AgentError("the spec has no features")
    return names


def scaffold_kind(root: Path) -> str:
    """The kind the working copy was scaffolded as: factory.json's "kind" (web_service without one)."""
    try:
        start = json.loads((root / "factory.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "web_service"
    kind = start.get("kind") if isinstance(start, dict) else None
    return kind if isinstance(kind, str) else "web_service"


def git(*args: str) -> str:
    """Run git with this agent's identity; raise AgentError (credentials scrubbed) on failure."""
    command = [
        "git",
        "-c",
        f"user.name={GIT_NAME}",
        "-c",
        f"user.email={GIT_EMAIL}",
        "-c",
        "commit.gpgsign=false",
        *args,
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()
        raise AgentError(f"git {args[0]} failed: {_scrub(detail)}")
    return result.stdout.strip()


def _scrub(text: str) -> str:
    """Hide credentials in URLs such as https://user:token@host/."""
    return re.sub(r"://[^/\s@]+@", "://***@", text)


def log(message: str) -> None:
    print(f"[scripted developer] {message}", file=sys.stderr, flush=True)


BROKEN_HEALTH = "/deliberately-missing-health"


def develop(
    spec_path: Path,
    iteration: int,
    fail_times: int,
    branch: str,
    remote: str,
    work_seconds: float = 0.0,
    broken_release_times: int = 0,
) -> dict:
    """Write, commit and push the implementation; return the AgentResult as a dict.

    ``work_seconds`` makes the agent take that long before it writes anything, as a real agent
    would: it lets tests kill a worker while the agent is in the middle of its work.
    ``broken_release_times``: for that many iterations the code passes its tests but the
    release's factory.json names a health path the service does not serve, so the Deployer's
    health check fails (to exercise the deploy repair loop).
    """
    try:
        spec = json.loads(spec_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise AgentError(f"cannot read the spec {spec_path}: {exc}") from None
    names = feature_names(spec)
    kind = spec["kind"]
    faulty = iteration <= fail_times
    root = Path(git("rev-parse", "--show-toplevel"))
    if not (root / "app.py").is_file():
        raise AgentError(f"this working copy has no app.py: not scaffolded from templates/{kind}")
    scaffolded = scaffold_kind(root)
    if scaffolded != kind:
        raise AgentError(f"this working copy was scaffolded as a {scaffolded}, but the spec is a {kind}")

    if work_seconds > 0:
        log(f"working for {work_seconds:g}s")
        time.sleep(work_seconds)
    log(
        f"iteration {iteration}: implementing {', '.join(names)} in {root.name}"
        + (" (deliberately faulty)" if faulty else "")
    )
    bot = kind == "telegram_bot"
    handlers = render_bot_handlers(names, faulty) if bot else render_handlers(names, faulty)
    tests = render_bot_tests(names) if bot else render_tests(names)
    (root / "handlers.py").write_text(handlers, encoding="utf-8")
    (root / "tests").mkdir(exist_ok=True)
    (root / "tests" / "test_features.py").write_text(tests, encoding="utf-8")
    start_spec = root / "factory.json"
    if start_spec.is_file():
        start = json.loads(start_spec.read_text(encoding="utf-8"))
        broken = iteration <= broken_release_times
        start["health"] = BROKEN_HEALTH if broken else "/health"
        start_spec.write_text(json.dumps(start, indent=2) + "\n", encoding="utf-8")
        if broken:
            log(f"iteration {iteration}: the release's health path is deliberately wrong")

    git("add", "-A")
    changed = subprocess.run(["git", "diff", "--cached", "--quiet"]).returncode != 0
    if changed:
        git("commit", "--quiet", "-m", f"Implement {', '.join(names)} (iteration {iteration})")
        log("committed")
    else:
        log("nothing changed; no commit")
    commit = git("rev-parse", "HEAD")
    git("push", "--quiet", remote, f"HEAD:refs/heads/{branch}")
    log(f"pushed {commit[:12]} to {remote}/{branch}")

    summary = (
        f"{'Implemented' if changed else 'Already implemented'} {', '.join(names)} "
        f"in handlers.py with tests in tests/test_features.py; {commit[:12]} is on "
        f"{remote}/{branch}."
    )
    if faulty:
        summary += (
            f" Deliberately faulty (iteration {iteration} <= fail-times {fail_times}) to exercise the repair loop."
        )
    return {"status": "complete", "commit": commit, "summary": summary}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agents.scripted.agent", description="The scripted developer agent (no LLM)."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    dev = commands.add_parser("develop", help="implement the spec's features, commit, push")
    dev.add_argument("--spec", type=Path, required=True, help="ProjectSpec JSON file")
    dev.add_argument("--iteration", type=int, default=1, help="1 for the first attempt")
    dev.add_argument("--fail-times", type=int, default=0, help="write faulty code while iteration <= this")
    dev.add_argument("--branch", required=True, help="branch to push HEAD to")
    dev.add_argument("--remote", default="origin")
    dev.add_argument(
        "--work-seconds", type=float, default=0.0, help="spend this long before writing (to simulate a slow agent)"
    )
    dev.add_argument("--ask", default="", help="report blocked with this question unless --guidance is given")
    dev.add_argument("--guidance", default="", help="a person's answer to the question")
    dev.add_argument(
        "--broken-release-times",
        type=int,
        default=0,
        help="the first N iterations pass their tests but fail the deploy's health check",
    )
    args = parser.parse_args(argv)

    if args.ask and not args.guidance.strip():
        log(f"blocked: {args.ask}")
        print(
            json.dumps(
                {
                    "status": "blocked",
                    "question": args.ask[:4000],
                    "summary": "Waiting for an answer before writing code.",
                }
            ),
            flush=True,
        )
        return 0
    if args.guidance:
        log(f"guidance from a person: {args.guidance}")
    try:
        result = develop(
            args.spec,
            args.iteration,
            args.fail_times,
            args.branch,
            args.remote,
            args.work_seconds,
            args.broken_release_times,
        )
    except AgentError as exc:
        log(f"failed: {exc}")
        print(json.dumps({"status": "failed", "summary": str(exc)[:4000]}), flush=True)
        return 1
    if args.guidance:
        # The scripted agent builds from its catalogue only: it cannot act on a person's words,
        # and says so rather than claiming it followed them.
        result["summary"] += (
            " (A person's guidance was received; the scripted agent builds from its catalogue and cannot act on it.)"
        )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
