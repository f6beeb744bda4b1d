"""A change run with an LLM architect: it is told the spec as it is and the person's words, and its
answer keeps the project's name, slug and kind whatever it says."""

from __future__ import annotations

import json

import pytest

from agents import services as agent_services
from agents.scripted.catalogue import plan
from orchestrator import pipeline
from projects import runs, services
from projects.models import PipelineRun, Project, Stage, StageRun
from tests.fakes.llm_server import completion

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_llm_architect_amends_the_spec_it_is_given(user, llm):
    project, first = services.project_create(owner=user, description="a web service that greets people by name")
    for stage in [s.value for s in Stage]:
        claim = runs.stage_claim(run_id=first.id, stage=stage, task_id=f"t-{stage}")
        if stage == Stage.NOTIFY:
            runs.run_succeed(run_id=first.id, result_message="It is live.")
        runs.stage_succeed(stage_run_id=claim.stage_run.id, attempt=claim.stage_run.attempt, output={})
    before = plan("a web service that greets people by name")
    services.project_set_spec(project_id=project.id, spec=before)
    agent_services.agent_config_set(role="architect", backend="openai_compatible")
    amended = plan("a web service that greets people by name and rolls dice").model_dump(mode="json")
    amended |= {"name": "Dice Greeter", "slug": "dice-greeter"}  # the model renames it: not kept
    llm.add(completion(content=json.dumps(amended), prompt_tokens=900, completion_tokens=300))

    run = services.project_request_change(project_id=project.id, description="also roll dice", user=user)
    pipeline.execute(stage="architect", run_id=run.id, task_id="t")

    prompt = llm.requests[0]["messages"][-1]["content"]
    assert "also roll dice" in prompt
    assert json.dumps(before.model_dump(mode="json"), indent=2) in prompt
    assert "Keep name, slug and kind exactly as they are" in prompt
    spec = Project.objects.get(id=project.id).spec
    assert (spec["name"], spec["slug"], spec["kind"]) == ("Greeter", "greeter", "web_service")
    assert [f["name"] for f in spec["features"]] == ["greet", "dice"]
    assert StageRun.objects.get(run=run, stage="architect").output["change"] == "also roll dice"
    assert PipelineRun.objects.get(id=run.id).status == "running"
