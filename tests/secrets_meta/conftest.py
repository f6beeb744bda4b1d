"""Fixtures of the secrets tests: a project of a person, and an empty redaction registry."""

from __future__ import annotations

import pytest

from projects import services as project_services
from secrets_meta import redaction


@pytest.fixture(autouse=True)
def fresh_registry():
    """Each test starts knowing no secret value, as a fresh process does."""
    redaction.forget_all()
    yield
    redaction.forget_all()


@pytest.fixture
def project(db, user):
    project, _ = project_services.project_create(owner=user, description="a web service that greets people by name")
    return project


@pytest.fixture
def other_project(db, other_user):
    project, _ = project_services.project_create(owner=other_user, description="a web service that echoes")
    return project
