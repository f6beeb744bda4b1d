"""Reads of secrets: metadata only (a value is read through a store, by the Deployer)."""

from __future__ import annotations

from django.db.models import QuerySet

from projects.selectors import projects_visible_to
from secrets_meta.models import SecretAudit, SecretMeta

# What anybody may see of a secret (the API's fields, in its order).
SECRET_FIELDS = ("key", "kind", "filled", "length", "store", "updated_at")


def project_visible(*, user, project_id: int) -> bool:
    """Whether ``user`` may see the project (its owner, or staff)."""
    return projects_visible_to(user).filter(id=project_id).exists()


def secrets_of_project(*, project_id: int) -> QuerySet[SecretMeta]:
    """The project's secrets, metadata only, by name."""
    return SecretMeta.objects.filter(project_id=project_id).order_by("key")


def secret_rows(*, project_id: int) -> list[dict]:
    """The project's secrets as plain rows of SECRET_FIELDS, by name."""
    return list(secrets_of_project(project_id=project_id).values(*SECRET_FIELDS))


def secrets_missing(*, project_id: int) -> list[str]:
    """The names of the user secrets the project expects and does not have yet."""
    return list(
        SecretMeta.objects.filter(project_id=project_id, kind=SecretMeta.Kind.USER, filled=False)
        .order_by("key")
        .values_list("key", flat=True)
    )


def secret_audit(*, project_id: int) -> QuerySet[SecretAudit]:
    """What changed in the project's secrets, newest first (never a value)."""
    return SecretAudit.objects.filter(secret__project_id=project_id).select_related("secret")
