"""``project_create(own_bot=...)``: the project is created wanting the person's own bot, in the same
transaction as its first run, so no stage ever sees it unset."""

from __future__ import annotations

import pytest

from config.errors import RateLimited
from projects import services
from projects.models import PipelineRun, Project

pytestmark = pytest.mark.django_db

DICE = "a telegram bot that rolls dice"


def test_own_bot_is_set_with_the_project_before_its_run_starts(user, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks() as callbacks:
        project, run = services.project_create(owner=user, description=DICE, own_bot=True)
        # What pipeline.start reads once this commits: the row as written, never updated after.
        assert Project.objects.filter(id=project.id, own_bot=True).exists()

    assert len(callbacks) >= 1 and run.status == PipelineRun.Status.QUEUED
    assert Project.objects.get(id=project.id).own_bot is True


def test_a_project_wants_a_pool_bot_by_default(user):
    project, _ = services.project_create(owner=user, description=DICE)

    assert Project.objects.get(id=project.id).own_bot is False


def test_a_refused_creation_leaves_nothing_behind(user, settings):
    settings.PROJECT_CREATE_LIMIT = 1
    services.project_create(owner=user, description=DICE)

    with pytest.raises(RateLimited):
        services.project_create(owner=user, description=DICE, own_bot=True)

    assert list(Project.objects.values_list("own_bot", flat=True)) == [False]
