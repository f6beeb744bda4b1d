"""``POST /github/webhook/``: GitHub tells the factory about check runs and check suites.

A delivery must carry ``X-Hub-Signature-256: sha256=<hex>``, the HMAC-SHA256 of the raw body
with GITHUB_WEBHOOK_SECRET, compared in constant time; nothing in an unsigned or wrongly signed
body is read. Without a configured secret the endpoint does not exist (404). Refusals are the
API's JSON error envelope: 401 no signature, 403 a wrong one, 400 a body that is not a check
event GitHub would send (validated with pydantic).

A ``check_run`` or ``check_suite`` event for a repository of the factory's organization whose
head SHA is the commit a run's Deployer is waiting for records that commit's CI state on the
project and, when the Deployer has given its claim back (it waits between polls), sends the
run's chain from the Deployer at once instead of after its retry delay. The Deployer still reads
the check runs of that exact commit from GitHub before it deploys: the delivery only wakes it.
A duplicate delivery, or one for a commit nobody waits for, changes nothing the database does
not already say (a second chain finds the stage taken or done and stops).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Literal

import structlog
from django.conf import settings
from django.db import transaction
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from config.errors import envelope
from orchestrator import pipeline
from orchestrator.codehost.github import FAILED
from projects import services
from projects.models import PipelineRun, Project, Stage, StageRun

log = structlog.get_logger(__name__)
SIGNATURE_HEADER = "X-Hub-Signature-256"
EVENT_HEADER = "X-GitHub-Event"
EVENTS = ("check_run", "check_suite")


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")  # GitHub's payloads carry far more than we read


class _Owner(_Loose):
    login: str = Field(min_length=1, max_length=100)


class _Repository(_Loose):
    name: str = Field(min_length=1, max_length=100)
    owner: _Owner


class _Check(_Loose):
    head_sha: str = Field(pattern=r"^[0-9a-f]{40}$")
    status: Literal["queued", "in_progress", "completed", "waiting", "requested", "pending"] | None = None
    conclusion: str | None = None


class CheckRunEvent(_Loose):
    action: str = Field(min_length=1, max_length=40)
    check_run: _Check
    repository: _Repository


class CheckSuiteEvent(_Loose):
    action: str = Field(min_length=1, max_length=40)
    check_suite: _Check
    repository: _Repository


def signature_ok(body: bytes, given: str | None) -> bool:
    secret = settings.GITHUB_WEBHOOK_SECRET
    if not secret or not given or not given.startswith("sha256="):
        return False
    expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(given.encode(), expected.encode())


def ci_state(check: _Check, *, suite: bool) -> str:
    """One event's word on a commit's CI: a failed check fails it; a passed check run is only
    one of several, so it stays pending until its suite (or the Deployer's own poll) says so."""
    if check.status != "completed":
        return "pending"
    if (check.conclusion or "") in FAILED:
        return "failure"
    return "success" if suite else "pending"


@transaction.atomic
def check_event_record(*, owner: str, repo: str, sha: str, state: str) -> int | None:
    """The CI state of ``sha`` on the project whose repository this is, when one of its runs'
    Deployer waits for that very commit; the run is woken on commit. Returns the run's id."""
    if owner.lower() != settings.GITHUB_ORG.lower():
        return None
    project = Project.objects.filter(slug=repo, deleted_at__isnull=True).only("id").first()
    if project is None:
        return None
    run = (
        PipelineRun.objects.filter(project=project, status=PipelineRun.Status.RUNNING, current_stage=Stage.DEPLOYER)
        .only("id", "iteration")
        .first()
    )
    if run is None:
        return None
    tested = (
        StageRun.objects.filter(run=run, stage=Stage.TESTER, iteration=run.iteration)
        .values_list("output", flat=True)
        .first()
    )
    if not tested or tested.get("commit") != sha:
        return None  # an older commit, or one this run will not deploy
    services.project_set_code_state(project_id=project.id, ci_status=state, ci_updated_at=timezone.now())
    waiting = StageRun.objects.filter(
        run=run, stage=Stage.DEPLOYER, iteration=run.iteration, status=StageRun.Status.PENDING
    ).exists()
    if waiting and state != "pending":
        run_id = run.id
        transaction.on_commit(lambda: pipeline.chain_from(run_id, Stage.DEPLOYER).apply_async())
    return run.id


@csrf_exempt
@require_POST
def github_webhook(request: HttpRequest) -> JsonResponse:
    if not settings.GITHUB_WEBHOOK_SECRET:
        return envelope(404, code="not_found", message="Not found.")
    given = request.headers.get(SIGNATURE_HEADER)
    if not given:
        return envelope(401, code="not_authenticated", message=f"The delivery carries no {SIGNATURE_HEADER} signature.")
    body = request.body
    if not signature_ok(body, given):
        log.warning("github_webhook_refused", reason="wrong signature", remote=request.META.get("REMOTE_ADDR"))
        return envelope(403, code="permission_denied", message="The delivery's signature does not match.")
    event = request.headers.get(EVENT_HEADER, "")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return envelope(400, code="validation_error", message="The body is not JSON.")
    if event == "ping":
        return JsonResponse({"ok": True, "event": "ping"})
    if event not in EVENTS:
        return JsonResponse({"ok": True, "event": event, "handled": False})
    try:
        if event == "check_run":
            payload = CheckRunEvent.model_validate(raw)
            check, suite = payload.check_run, False
        else:
            payload = CheckSuiteEvent.model_validate(raw)
            check, suite = payload.check_suite, True
    except ValidationError as exc:
        fields = sorted({".".join(str(p) for p in e["loc"]) for e in exc.errors()})[:10]
        return envelope(400, code="validation_error", message=f"Not a {event} event: {', '.join(fields)}.")
    state = ci_state(check, suite=suite)
    run_id = check_event_record(
        owner=payload.repository.owner.login, repo=payload.repository.name, sha=check.head_sha, state=state
    )
    log.info("github_webhook", github_event=event, sha=check.head_sha[:12], state=state, run_id=run_id)
    return JsonResponse({"ok": True, "event": event, "handled": run_id is not None})
