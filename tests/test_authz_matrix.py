"""Who may do what, for every route in the URL configuration.

The routes are read from the URLconf, not listed by hand: each one is tried as five principals
(anonymous, a malformed credential, another user, the owner, staff) and must answer what
``MATRIX`` says. A route without an entry fails, so a new route cannot ship without deciding
who may use it. Methods a route does not list must answer 405 to the owner. Under ``/api/``
every refusal must be the JSON error envelope.

The principals stand for the credentials each kind of route takes:
- ``user`` routes (the API): an ``Authorization: Token`` of that user; malformed is ``Token``
  with no key; the objects tried are the owner's.
- ``worker`` routes (channel 2): owner is the run's own worker token, other is the token of a
  worker of another person's run, staff is a staff user's API token (not a worker token).
- ``telegram``: owner is Telegram with the webhook's secret, everyone else lacks it.
- ``github``: owner is GitHub signing the body with the webhook's secret (X-Hub-Signature-256),
  malformed signs it with another secret, everyone else sends no signature.
- the ``admin`` namespace (sessions): one rule for all its routes, since ``AdminSite`` wraps
  every view but login and logout in its staff check: people who are not staff are sent to the
  login page, staff are not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import dataclass

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver, resolve
from rest_framework.authtoken.models import Token

from agents import services as agent_services
from agents.scripted.catalogue import plan
from projects import events, runs, services
from projects.models import RunEvent, Stage

PRINCIPALS = ("anonymous", "malformed", "other", "owner", "staff")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


# --- the routes, from the URLconf ----------------------------------------------------------
@dataclass(frozen=True)
class Route:
    name: str  # namespaced ("admin:index"); an unnamed route is known by its pattern
    pattern: str
    namespace: str

    def __str__(self) -> str:
        return f"{self.name} {self.pattern}"


def _join(prefix: str, pattern) -> str:
    """As Django joins routes (ResolverMatch.route): an included regex loses its leading "^"."""
    text = str(pattern)
    return prefix + (text[1:] if prefix and text.startswith("^") else text)


def _walk(patterns, prefix: str = "", namespace: str = ""):
    for entry in patterns:
        if isinstance(entry, URLResolver):
            yield from _walk(entry.url_patterns, _join(prefix, entry.pattern), entry.namespace or namespace)
        elif isinstance(entry, URLPattern):
            pattern = _join(prefix, entry.pattern)
            name = f"{namespace}:{entry.name}" if namespace and entry.name else entry.name or pattern
            yield Route(name=name, pattern=pattern, namespace=namespace)


ROUTES = list(_walk(get_resolver().url_patterns))

USER_READ = {"anonymous": 401, "malformed": 401, "other": 200, "owner": 200, "staff": 200}
OWNED_READ = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 200, "staff": 200}
CREATE = {"anonymous": 401, "malformed": 401, "other": 201, "owner": 201, "staff": 201}
WORKER = {"anonymous": 401, "malformed": 401, "other": 403, "owner": 202, "staff": 401}
PUBLIC = {"anonymous": 200, "malformed": 401, "other": 200, "owner": 200, "staff": 200}
TELEGRAM = {"anonymous": 403, "malformed": 403, "other": 403, "owner": 200, "staff": 403}
METRICS = {"anonymous": 401, "malformed": 403, "other": 401, "owner": 200, "staff": 401}
METRICS_TOKEN = "metrics-token-for-tests"
GITHUB = {"anonymous": 401, "malformed": 403, "other": 401, "owner": 200, "staff": 401}
GITHUB_WEBHOOK_SECRET = "github-webhook-secret-for-tests"
GITHUB_PING = {"zen": "Keep it logically awesome.", "hook_id": 1}
ANYONE = dict.fromkeys(PRINCIPALS, 200)
DESCRIPTION = {"description": "a web service that greets people by name"}
OWNED_WRITE = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 200, "staff": 200}
OWNED_DELETE = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 204, "staff": 204}
# The owner's change starts a run, so staff's that follows finds it in progress (409); a project that
# never went live has nothing to redeploy, start or roll back (409): the others' answers are still 404.
OWNED_CHANGE = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 201, "staff": 409}
OWNED_CONFLICT = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 409, "staff": 409}
# The owner's DELETE deletes it: staff's then finds nothing.
OWNED_GONE = {"anonymous": 401, "malformed": 401, "other": 404, "owner": 204, "staff": 404}
# A bot the Bot API stand-in serves during this test (the project-bot route checks it with "Telegram").
BOT_TOKEN = "424242:" + "A" * 35

# route name -> (credential kind, {method: (expected status per principal, JSON body)}, lists)
MATRIX: dict[str, tuple[str, dict[str, tuple[dict[str, int], dict | None]], str | None]] = {
    "api-root": ("user", {"GET": (USER_READ, None)}, None),
    "project-list": ("user", {"GET": (USER_READ, None), "POST": (CREATE, DESCRIPTION)}, "project"),
    "project-detail": ("user", {"GET": (OWNED_READ, None), "DELETE": (OWNED_GONE, None)}, None),
    "project-changes": ("user", {"POST": (OWNED_CHANGE, {"description": "also roll dice"})}, None),
    "project-redeploy": ("user", {"POST": (OWNED_CONFLICT, None)}, None),
    "project-stop": ("user", {"POST": (OWNED_WRITE, None)}, None),
    "project-start": ("user", {"POST": (OWNED_CONFLICT, None)}, None),
    "project-rollback": ("user", {"POST": (OWNED_CONFLICT, {})}, None),
    "project-incidents": ("user", {"GET": (OWNED_READ, None)}, None),
    "run-list": ("user", {"GET": (USER_READ, None)}, "run"),
    "run-detail": ("user", {"GET": (OWNED_READ, None)}, None),
    "run-events": ("user", {"GET": (OWNED_READ, None)}, None),
    "project-secrets": ("user", {"GET": (OWNED_READ, None)}, None),
    # PUT first: the owner's DELETE then finds the secret (a second DELETE is 204 too).
    "project-secret": (
        "user",
        {"PUT": (OWNED_WRITE, {"value": "not-a-real-secret"}), "DELETE": (OWNED_DELETE, None)},
        None,
    ),
    # PUT first (the owner's bot, then staff's same bot: a no-op), GET finds it, DELETE lets it go.
    "project-bot": (
        "user",
        {"PUT": (OWNED_WRITE, {"token": BOT_TOKEN}), "GET": (OWNED_READ, None), "DELETE": (OWNED_DELETE, None)},
        None,
    ),
    "worker-progress": ("worker", {"POST": (WORKER, {"message": "writing handlers"})}, None),
    "worker-ask": ("worker", {"POST": (WORKER, {"question": "Which language?"})}, None),
    "worker-result": ("worker", {"POST": (WORKER, {"status": "failed", "summary": "gave up"})}, None),
    "schema": ("user", {"GET": (PUBLIC, None)}, None),
    "docs": ("user", {"GET": (PUBLIC, None)}, None),
    "telegram-webhook": ("telegram", {"POST": (TELEGRAM, {"update_id": 1})}, None),
    "github-webhook": ("github", {"POST": (GITHUB, GITHUB_PING)}, None),
    # Prometheus: only METRICS_TOKEN as a bearer token; an API token is no credential here.
    "metrics": ("metrics", {"GET": (METRICS, None)}, None),
    "favicon": ("user", {"GET": (ANYONE, None)}, None),  # what browsers ask every site for
}
NAMESPACE_RULES = {"admin"}
ADMIN_LOGIN = "/admin/login/"


def test_every_matrix_entry_names_a_route():
    names = {route.name for route in ROUTES}
    assert set(MATRIX) <= names, f"stale entries: {sorted(set(MATRIX) - names)}"


# --- the objects and credentials every route is tried with -------------------------------
@dataclass
class World:
    users: dict
    tokens: dict
    project: object
    run: object
    worker_run: object
    worker_sessions: dict  # "owner": this run's worker, "other": a worker of someone else's run

    def worker_token(self, who: str) -> str:
        """A fresh token, as each developer turn gets (a reported result ends the last one)."""
        session = self.worker_sessions[who]
        return agent_services.session_issue_token(session_id=session.id, run_id=session.run_id)


def _settle(run) -> None:
    for stage in [s.value for s in Stage]:
        claim = runs.stage_claim(run_id=run.id, stage=stage, task_id=f"t-{run.id}-{stage}")
        if stage == Stage.NOTIFY:
            runs.run_succeed(run_id=run.id, result_message="It is live.")
            events.event_record(run_id=run.id, type=RunEvent.Type.NOTIFIED, stage="notify", payload={})
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})


def _worker_session(project, run):
    session = agent_services.session_create(
        project_id=project.id, run_id=run.id, role="developer", runtime="process", workspace_root="/nonexistent"
    )
    agent_services.session_set_state(session_id=session.id, state="running", reason="test")
    return session


@pytest.fixture
def world(request, db, django_user_model, settings) -> World:
    settings.TELEGRAM_WEBHOOK_SECRET = "webhook-secret-for-tests"
    settings.METRICS_TOKEN = METRICS_TOKEN
    settings.GITHUB_WEBHOOK_SECRET = GITHUB_WEBHOOK_SECRET
    users = {  # no passwords: hashing them would be most of this test's time
        "owner": django_user_model.objects.create_user(username="owner"),
        "other": django_user_model.objects.create_user(username="other"),
        # Staff in the API's sense (sees everything); a superuser, so admin pages really render.
        "staff": django_user_model.objects.create_superuser(username="staff"),
    }
    tokens = {who: Token.objects.create(user=user).key for who, user in users.items()}
    if request.getfixturevalue("route").namespace in NAMESPACE_RULES:  # sessions only: no objects needed
        return World(users=users, tokens=tokens, project=None, run=None, worker_run=None, worker_sessions={})
    project, run = services.project_create(owner=users["owner"], description="a web service that greets people")
    _settle(run)  # its event stream ends at once
    if request.getfixturevalue("route").name == "project-changes":  # a change amends a planned project
        services.project_set_spec(project_id=project.id, spec=plan("a web service that greets people"))
    worker_project, worker_run = services.project_create(owner=users["owner"], description="a service that echoes")
    other_project, other_run = services.project_create(owner=users["other"], description="a service that counts")
    return World(
        users=users,
        tokens=tokens,
        project=project,
        run=run,
        worker_run=worker_run,
        worker_sessions={
            "owner": _worker_session(worker_project, worker_run),
            "other": _worker_session(other_project, other_run),
        },
    )


def _url(route: Route, world: World) -> str:
    kind = "run" if route.name.startswith("run-") else "project"
    values = {
        "pk": getattr(world.run if kind == "run" else world.project, "id", None),
        "run_id": getattr(world.worker_run, "id", None),
        "format": "json",
        "app_label": "projects",
        "object_id": world.users["owner"].id,  # an admin page about an object that may not exist
        "content_type_id": 1,
        "id": world.users["staff"].id,
        "url": "nothing-here/",
        "name": "API_KEY",  # a secret's name
    }

    def converter(match: re.Match) -> str:
        conv, name = match.group(1), match.group(2)
        return ".json" if conv == "drf_format_suffix" else str(values[name])

    url = re.sub(r"\(\?P<(\w+)>(?:[^()]|\([^()]*\))*\)", lambda m: str(values[m.group(1)]), route.pattern)
    url = re.sub(r"<(?:(\w+):)?(\w+)>", converter, url)
    url = "/" + url.removeprefix("^").replace("$", "").replace("\\.", ".").replace("/?", "/")
    assert resolve(url).route == route.pattern, (route, url)  # the URL reaches this very route
    return url


def _client_for(kind: str, principal: str, world: World) -> Client:
    client = Client()
    if kind == "user":
        header = {"anonymous": None, "malformed": "Token"}.get(principal, f"Token {world.tokens.get(principal)}")
    elif kind == "worker":
        fixed = {"anonymous": None, "malformed": "Worker", "staff": f"Token {world.tokens['staff']}"}
        header = fixed[principal] if principal in fixed else f"Worker {world.worker_token(principal)}"
    elif kind == "metrics":
        fixed = {"anonymous": None, "malformed": "Bearer not-the-token", "owner": f"Bearer {METRICS_TOKEN}"}
        header = fixed[principal] if principal in fixed else f"Token {world.tokens[principal]}"
    elif kind == "telegram":
        secret = {"owner": "webhook-secret-for-tests", "malformed": "not-the-secret"}.get(principal)
        if secret:
            client.defaults["HTTP_X_TELEGRAM_BOT_API_SECRET_TOKEN"] = secret
        header = None if principal in ("anonymous", "malformed", "owner") else f"Token {world.tokens[principal]}"
    elif kind == "github":  # the matrix's one body, signed as GitHub signs it
        key = {"owner": GITHUB_WEBHOOK_SECRET, "malformed": "not-the-secret"}.get(principal)
        if key:
            mac = hmac.new(key.encode(), json.dumps(GITHUB_PING).encode(), hashlib.sha256).hexdigest()
            client.defaults["HTTP_X_HUB_SIGNATURE_256"] = f"sha256={mac}"
            client.defaults["HTTP_X_GITHUB_EVENT"] = "ping"
        header = None if principal in ("anonymous", "malformed", "owner") else f"Token {world.tokens[principal]}"
    else:  # sessions (admin)
        header = "Token malformed and ignored" if principal == "malformed" else None
        if principal in world.users:
            client.force_login(world.users[principal])
    if header:
        client.defaults["HTTP_AUTHORIZATION"] = header
    return client


def _call(client, method: str, url: str, body: dict | None):
    response = client.generic(
        method, url, data=json.dumps(body) if body is not None else "", content_type="application/json"
    )
    if response.streaming:
        response.content_seen = b"".join(response.streaming_content)  # a settled run's stream ends
    return response


def _is_envelope(response) -> bool:
    if response.get("Content-Type") != "application/json":
        return False
    body = json.loads(response.content)
    return set(body) == {"error"} and set(body["error"]) == {"code", "message", "extra"}


@pytest.mark.parametrize("route", ROUTES, ids=str)
def test_route_answers_each_principal_as_the_matrix_says(route, world, telegram_if_needed):
    if route.namespace in NAMESPACE_RULES:
        return _check_admin(route, world)
    assert route.name in MATRIX, (
        f"{route} has no entry in the authorization matrix (tests/test_authz_matrix.py): decide who may use it"
    )
    kind, methods, lists = MATRIX[route.name]
    url = _url(route, world)
    problems = []
    for method, (expected, body) in methods.items():
        for principal in PRINCIPALS:
            response = _call(_client_for(kind, principal, world), method, url, body)
            if response.status_code != expected[principal]:
                problems.append(
                    f"{method} {url} as {principal}: {response.status_code}, expected "
                    f"{expected[principal]}: {getattr(response, 'content', b'')[:200]!r}"
                )
            elif response.status_code >= 400 and url.startswith("/api/") and not _is_envelope(response):
                problems.append(f"{method} {url} as {principal}: {response.status_code} not in the envelope")
            elif lists and method == "GET" and response.status_code == 200:
                mine = world.run.id if lists == "run" else world.project.id
                ids = {item["id"] for item in response.json()["results"]}
                if (mine in ids) != (principal in ("owner", "staff")):
                    problems.append(f"GET {url} as {principal}: the owner's {lists} seen: {mine in ids}")
    for method in set(METHODS) - set(methods):
        response = _call(_client_for(kind, "owner", world), method, url, None)
        if response.status_code != 405:
            problems.append(f"{method} {url} as owner: {response.status_code}, expected 405 (not listed)")
        elif url.startswith("/api/") and not _is_envelope(response):
            problems.append(f"{method} {url} as owner: 405 not in the envelope")
    assert not problems, "\n".join(problems)


def _check_admin(route: Route, world: World) -> None:
    url = _url(route, world)
    problems = []
    for principal in PRINCIPALS:
        response = _call(_client_for("session", principal, world), "GET", url, None)
        to_login = response.status_code == 302 and response["Location"].startswith(ADMIN_LOGIN)
        if route.name == "admin:login":  # the one page anybody may see
            ok = response.status_code == 302 if principal == "staff" else response.status_code == 200
        elif route.name == "admin:logout":  # a GET shows nothing and logs nobody out
            ok = response.status_code in (302, 405) and not response.content
        elif principal == "staff":
            ok = response.status_code < 500 and not to_login
        else:
            ok = to_login
        if not ok:
            problems.append(f"GET {url} as {principal}: {response.status_code} {response.get('Location', '')}")
    assert not problems, "\n".join(problems)


@pytest.fixture
def telegram_if_needed(request):
    """The webhook hands an accepted update to the bot, which needs a Bot API to talk to; the
    project's bot endpoint checks a token with one."""
    route = request.getfixturevalue("route")
    if route.name == "telegram-webhook":
        yield request.getfixturevalue("telegram")
    elif route.name == "project-bot":
        from orchestrator.telegram.standin import StandIn

        settings = request.getfixturevalue("settings")
        with StandIn() as standin:
            standin.add_bot("matrix_bot", token=BOT_TOKEN)
            settings.TELEGRAM_API_URL = standin.api_url
            yield standin
    else:
        yield None
