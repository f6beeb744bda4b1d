"""State changes of projects themselves: creating one (and its first run), its spec and repository.

The run state machine is ``projects.runs``; releases are ``projects.deployments``; events are
``projects.events``; people are ``projects.people``.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from config.errors import Conflict, NotFound, RateLimited, ValidationFailed
from projects import runs
from projects.models import Deployment, PipelineRun, Project
from projects.specs import SLUG, ProjectSpec

log = structlog.get_logger(__name__)

SLUG_ATTEMPTS = 20


def _clean_description(description: Any) -> str:
    if not isinstance(description, str) or not description.strip():
        raise ValidationFailed(
            "Describe the service you want, e.g. 'a web service that greets people by name'.",
            code="description_required",
        )
    text = description.strip()
    limit = settings.PROJECT_DESCRIPTION_MAX_CHARS
    if len(text) > limit:
        raise ValidationFailed(
            f"The description is {len(text)} characters long; the limit is {limit}.",
            code="description_too_long",
            extra={"length": len(text), "limit": limit},
        )
    return text


def _check_create_rate(owner) -> None:
    """A person may start at most PROJECT_CREATE_LIMIT projects per PROJECT_CREATE_WINDOW_SECONDS."""
    limit, window = settings.PROJECT_CREATE_LIMIT, settings.PROJECT_CREATE_WINDOW_SECONDS
    if not limit or getattr(owner, "is_staff", False):
        return
    since = timezone.now() - timedelta(seconds=window)
    recent = Project.objects.filter(owner=owner, created_at__gte=since).count()
    if recent >= limit:
        minutes = max(1, round(window / 60))
        raise RateLimited(
            f"You have started {recent} projects in the last {minutes} minutes; the limit is {limit}. "
            "Please wait a little before starting another.",
            code="project_rate_limited",
            extra={"limit": limit, "window_seconds": window},
        )


@transaction.atomic
def project_create(*, owner, description: str, own_bot: bool = False) -> tuple[Project, PipelineRun]:
    """Create a project from a description and start its first run.

    ``own_bot``: if it is a Telegram bot, it runs as the person's own bot (they give its token),
    never one from the factory's pool; set before the run starts, so no stage sees it unset."""
    text = _clean_description(description)
    _check_create_rate(owner)
    project = Project.objects.create(owner=owner, description=text, own_bot=bool(own_bot))
    run = runs.run_create(project=project, kind=PipelineRun.Kind.CREATE)
    return project, run


def _free_slug(base: str, project_id: int) -> str:
    """The base slug, or the lowest free ``base-N``: every taken candidate is read in one query."""
    stem = base[:36]
    taken = set(
        Project.objects.filter(Q(slug=base) | Q(slug__startswith=f"{stem}-"))
        .exclude(id=project_id)
        .values_list("slug", flat=True)
    )
    if base not in taken:
        return base
    n = 2
    while f"{stem}-{n}" in taken:
        n += 1
    return f"{stem}-{n}"


def _clean_slug(name: Any) -> str:
    """A project's new name as a person types it: a slug that is also a usable repository name
    (GitHub allows letters, digits, ``-``, ``_`` and ``.``; a slug is the stricter subset)."""
    if not isinstance(name, str) or not name.strip():
        raise ValidationFailed("Reply with the new name for the project, e.g. 'greeter-2'.", code="slug_required")
    slug = name.strip().strip("'\"“”«»`").lower()
    if not re.fullmatch(SLUG, slug):
        raise ValidationFailed(
            f"{slug[:60]!r} cannot be a project's name: use 3 to 42 lowercase letters, digits and dashes, "
            "starting with a letter and not ending with a dash (e.g. 'greeter-2').",
            code="bad_slug",
        )
    return slug


@transaction.atomic
def project_rename(*, project_id: int, slug: Any) -> Project:
    """Give a project that has no repository and no release yet another slug (its repository's
    and its address's name): the Preparer found the name taken on the code host. Refused for a
    project that already has its repository or a release (their names follow the slug), and for
    a name another project has."""
    new = _clean_slug(slug)
    project = Project.objects.select_for_update().filter(id=project_id).first()
    if project is None:
        raise NotFound("No such project.", code="project_not_found")
    if project.slug == new:
        raise ValidationFailed(f"The project is already called {new!r}; choose another name.", code="slug_unchanged")
    if project.repo_url or Deployment.objects.filter(project_id=project_id).exists():
        raise Conflict(
            "The project already has its repository or a release under its name; it cannot be renamed.",
            code="project_named",
        )
    if Project.objects.filter(slug=new).exclude(id=project_id).exists():
        raise ValidationFailed(f"The name {new!r} is taken by another project; choose another.", code="slug_taken")
    old = project.slug
    project.slug = new
    if project.spec:
        project.spec = {**project.spec, "slug": new}
    try:
        with transaction.atomic():
            project.save(update_fields=["slug", "spec", "updated_at"])
    except IntegrityError as exc:  # another project took it at the same moment
        taken = f"The name {new!r} is taken by another project; choose another."
        raise ValidationFailed(taken, code="slug_taken") from exc
    log.info("project_renamed", project_id=project_id, old=old, new=new)
    return project


@transaction.atomic
def project_set_spec(*, project_id: int, spec: ProjectSpec) -> Project:
    """Record the Architect's spec; the slug is made unique by a numeric suffix if taken.

    Two Architects may pick the same slug at once: the unique constraint decides, and the loser
    looks again (its savepoint rolled back) instead of failing its run.
    """
    project = Project.objects.select_for_update().get(id=project_id)
    for _ in range(SLUG_ATTEMPTS):
        slug = project.slug or _free_slug(spec.slug, project_id)  # a rerun keeps the slug it was given
        project.name, project.slug, project.kind = spec.name, slug, spec.kind
        project.spec = spec.model_dump(mode="json") | {"slug": slug}
        try:
            with transaction.atomic():
                project.save(update_fields=["name", "slug", "kind", "spec", "updated_at"])
            return project
        except IntegrityError:
            log.info("slug_taken_concurrently", project_id=project_id, slug=slug)
            project.slug = None
    raise Conflict(f"Could not find a free name for {spec.slug!r}; try again.", code="slug_conflict")


@transaction.atomic
def project_set_repo(*, project_id: int, repo_url: str) -> None:
    Project.objects.filter(id=project_id).update(repo_url=repo_url, updated_at=timezone.now())


CODE_STATE_FIELDS = {"pull_request_number", "pull_request_url", "ci_status", "ci_updated_at"}


def project_set_code_state(*, project_id: int, **fields: Any) -> None:
    """What the code host reports about the project: its open pull request, its last CI status."""
    unknown = set(fields) - CODE_STATE_FIELDS
    if unknown:
        raise ValueError(f"not code-host state: {sorted(unknown)}")
    Project.objects.filter(id=project_id).update(**fields, updated_at=timezone.now())


# --- a live project: change requests, redeploys, deletion ----------------------------------------
def _clean_change(description: Any) -> str:
    if not isinstance(description, str) or not description.strip():
        raise ValidationFailed("Describe the change you want, e.g. 'also roll dice'.", code="description_required")
    return _clean_description(description)


def _check_change_rate(owner) -> None:
    """Change requests and redeploys share the creation limit: PROJECT_CREATE_LIMIT runs of these
    kinds per PROJECT_CREATE_WINDOW_SECONDS per person (staff are not limited)."""
    limit, window = settings.PROJECT_CREATE_LIMIT, settings.PROJECT_CREATE_WINDOW_SECONDS
    if not limit or getattr(owner, "is_staff", False):
        return
    since = timezone.now() - timedelta(seconds=window)
    recent = PipelineRun.objects.filter(
        project__owner=owner,
        kind__in=[PipelineRun.Kind.CHANGE, PipelineRun.Kind.REDEPLOY],
        created_at__gte=since,
    ).count()
    if recent >= limit:
        minutes = max(1, round(window / 60))
        raise RateLimited(
            f"You have asked for {recent} changes or redeploys in the last {minutes} minutes; the limit is "
            f"{limit}. Please wait a little before asking for another.",
            code="change_rate_limited",
            extra={"limit": limit, "window_seconds": window},
        )


def _locked_project(project_id: int) -> Project:
    project = Project.objects.select_for_update().filter(id=project_id, deleted_at__isnull=True).first()
    if project is None:
        raise NotFound("No such project.", code="project_not_found")
    return project


@transaction.atomic
def project_request_change(*, project_id: int, description: str, user) -> PipelineRun:
    """Start a run of kind ``change``: the Architect amends the project's spec with ``description``,
    the Developer builds on the live release's commit, the Tester runs the old and the new checks,
    the Deployer swaps the release in only once it passes (a failure leaves the live one serving).
    409 ``not_planned`` before the project has a spec, ``run_in_progress`` while a run is under way."""
    text = _clean_change(description)
    project = _locked_project(project_id)
    if not project.spec:
        raise Conflict(
            "The project has no plan yet (its first run did not get past the Architect): create a new project.",
            code="not_planned",
        )
    _check_change_rate(user)
    run = runs.run_create(project=project, kind=PipelineRun.Kind.CHANGE)
    # The run's own words, written in the transaction that created it (its start is sent on commit).
    PipelineRun.objects.filter(id=run.id).update(request=text)
    run.request = text
    return run


@transaction.atomic
def project_redeploy(*, project_id: int, user) -> PipelineRun:
    """Start a run of kind ``redeploy``: the live (else last deployed) commit again, as a new release.
    409 ``never_deployed`` for a project that never went live."""
    project = _locked_project(project_id)
    if not Deployment.objects.filter(project=project, live_at__isnull=False).exists():
        raise Conflict("The project was never deployed: there is nothing to redeploy.", code="never_deployed")
    _check_change_rate(user)
    return runs.run_create(project=project, kind=PipelineRun.Kind.REDEPLOY)


def project_check_idle(*, project_id: int) -> None:
    """409 ``run_in_progress`` while a run of the project is under way (its Deployer may be
    starting a release): stopping, starting, rolling back and deleting wait for it."""
    active = PipelineRun.objects.filter(project_id=project_id, status__in=PipelineRun.ACTIVE).first()
    if active is not None:
        raise Conflict(
            f"Run #{active.id} of this project is in progress; wait for it to end, or cancel it.",
            code="run_in_progress",
            extra={"run_id": active.id},
        )


@transaction.atomic
def project_mark_deleted(*, project_id: int) -> Project:
    """The project is deleted: out of every list, its runs and releases kept as history. The engine
    tears its releases, route, workers and bot down right after (``orchestrator.api``, admin)."""
    project = _locked_project(project_id)
    project_check_idle(project_id=project.id)
    project.deleted_at = timezone.now()
    project.save(update_fields=["deleted_at", "updated_at"])
    log.info("project_deleted", project_id=project.id)
    return project


def deployment_set_usage(*, deployment_id: int, cpu_percent: float | None, memory_bytes: int | None) -> None:
    """The release's resource use at its last probe (from its deploy target)."""
    Deployment.objects.filter(id=deployment_id).update(cpu_percent=cpu_percent, memory_bytes=memory_bytes)
