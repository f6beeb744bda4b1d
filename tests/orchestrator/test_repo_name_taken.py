"""A repository name someone else has on GitHub: the Preparer asks the person for another name,
the answer (a reply, i.e. guidance text, or the admin's answer) renames the project, and the run
goes on to create the repository under the new name; names that cannot be used are refused
clearly and leave the question open. Against the loopback GitHub (tests/fakes/github_server.py)."""

from __future__ import annotations

import pytest

from agents import services as agent_services
from agents.models import Escalation
from config.errors import Conflict, ValidationFailed
from projects import services
from projects.models import OutboundMessage, PipelineRun, Project
from tests.orchestrator.test_codehost_github import drive, github  # noqa: F401  (the fixture)
from tests.telegram.conftest import ADA_TG, ada, ada_tg, deliver_outbox, post_update  # noqa: F401  (fixtures)


def _taken(new_run, github):  # noqa: F811
    run = new_run()
    drive(run.id, until="architect")
    slug = Project.objects.get(id=run.project_id).slug
    theirs = github.add_repo(f"acme/{slug}", description="someone's", files={"README.md": "ours, not yours\n"})
    drive(run.id, start="preparer")
    return run, slug, theirs


def test_a_foreign_repository_asks_for_another_name_and_the_run_goes_on_under_it(
    new_run,
    github,  # noqa: F811
    user,
):
    run, slug, theirs = _taken(new_run, github)
    before = github.branch(theirs.full_name, "main")
    run = PipelineRun.objects.get(id=run.id)
    assert run.status == "waiting_human" and run.error_code == ""
    question = Escalation.objects.get(run=run, status="open")
    assert question.reason == Escalation.Reason.REPO_NAME_TAKEN
    assert f"acme/{slug} already exists on GitHub and is not this project's" in question.question
    assert f"'{slug}-2'" in question.question

    # The person's reply is the new name, as the chat hands it over (action guidance, its text).
    answered = agent_services.escalation_answer(
        escalation_id=question.id, user=user, action="guidance", answer=f"  {slug}-mine "
    )
    assert answered.status == "answered" and answered.answer == f"{slug}-mine"
    project = Project.objects.get(id=run.project_id)
    assert project.slug == f"{slug}-mine" and project.spec["slug"] == f"{slug}-mine"
    assert PipelineRun.objects.get(id=run.id).status == "running"

    drive(run.id, start="preparer")
    run = PipelineRun.objects.select_related("project").get(id=run.id)
    assert run.status == "succeeded", run.error_message
    mine = github.repos[f"acme/{slug}-mine"]
    assert run.project.repo_url == f"{github.url}/acme/{slug}-mine"
    assert mine.pulls[1]["merged"]
    assert github.branch(theirs.full_name, "main") == before  # theirs untouched throughout
    assert len(github.repos[theirs.full_name].pulls) == 0


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        ("", "slug_required"),
        ("Not A Slug!", "bad_slug"),
        ("ab", "bad_slug"),
        ("ends-with-dash-", "bad_slug"),
        ("x" * 60, "bad_slug"),
        ("{slug}", "slug_unchanged"),
        ("{other}", "slug_taken"),
    ],
    ids=["empty", "spaces-and-capitals", "too-short", "trailing-dash", "too-long", "same-name", "another-projects"],
)
def test_a_name_that_cannot_be_used_is_refused_clearly_and_the_question_stays_open(
    new_run,
    github,  # noqa: F811
    user,
    answer,
    code,
):
    run, slug, _ = _taken(new_run, github)
    other = Project.objects.create(owner=user, description="another project", slug=f"{slug}-taken")
    question = Escalation.objects.get(run=run, status="open")
    with pytest.raises(ValidationFailed) as refused:
        agent_services.escalation_answer(
            escalation_id=question.id,
            user=user,
            action="guidance",
            answer=answer.format(slug=slug, other=other.slug),
        )
    assert refused.value.code == code
    assert refused.value.message
    question.refresh_from_db()
    assert question.status == "open"
    assert Project.objects.get(id=run.project_id).slug == slug
    assert PipelineRun.objects.get(id=run.id).status == "waiting_human"


def test_cancel_still_ends_the_run(new_run, github, user):  # noqa: F811
    run, slug, _ = _taken(new_run, github)
    question = Escalation.objects.get(run=run, status="open")
    agent_services.escalation_answer(escalation_id=question.id, user=user, action="cancel")
    assert PipelineRun.objects.get(id=run.id).status in ("cancelled", "running")  # cancel is asynchronous
    assert Project.objects.get(id=run.project_id).slug == slug


def test_a_project_with_its_repository_cannot_be_renamed(new_run, github):  # noqa: F811
    run = new_run()
    drive(run.id)
    project = Project.objects.get(id=run.project_id)
    with pytest.raises(Conflict) as refused:
        services.project_rename(project_id=project.id, slug="something-else")
    assert refused.value.code == "project_named"
    assert Project.objects.get(id=project.id).slug == project.slug


def test_a_reply_in_telegram_names_the_project_and_a_bad_name_is_answered_clearly(
    new_run,
    github,  # noqa: F811
    telegram,
    client,
    ada,  # noqa: F811
    ada_tg,  # noqa: F811
):
    """The question reaches the person's chat; a reply that is no usable name is answered with
    why, and a reply with one renames the project and resumes the run."""
    run, slug, theirs = _taken(new_run, github)
    deliver_outbox()
    question = Escalation.objects.get(run=run, status="open")
    carrier = OutboundMessage.objects.get(escalation=question, status="sent")
    assert "another name" in carrier.text

    post_update(
        client,
        telegram.make_update(from_user=ada_tg, text="My Project!", reply_to_message_id=carrier.telegram_message_id),
    )
    assert "cannot be a project's name" in telegram.texts_to(ADA_TG)[-1]
    assert Escalation.objects.get(id=question.id).status == "open"

    post_update(
        client,
        telegram.make_update(from_user=ada_tg, text=f"{slug}-ours", reply_to_message_id=carrier.telegram_message_id),
    )
    assert telegram.texts_to(ADA_TG)[-1] == f"Thanks. Run #{run.id} goes on with your answer."
    assert Project.objects.get(id=run.project_id).slug == f"{slug}-ours"
    drive(run.id, start="preparer")
    assert PipelineRun.objects.get(id=run.id).status == "succeeded"
    assert github.repos[f"acme/{slug}-ours"].pulls[1]["merged"]
    assert theirs.pulls == {}
