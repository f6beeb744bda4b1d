"""State changes of projects themselves: creating one (and its first run), its spec and repository.

The run state machine is ``projects.runs``; releases are ``projects.deployments``; events are
``projects.events``; people are ``projects.people``.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import structlog
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from config.errors import Conflict, RateLimited, ValidationFailed
from projects import runs
from projects.models import PipelineRun, Project
from projects.specs import ProjectSpec

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
