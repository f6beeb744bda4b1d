"""Every stage is safe to run twice: one commit, one deployment, one live process.

The stages run in this process (no broker), against the real database, real git, real copier,
the scripted agent in a real worker process group and a real released service on loopback.
"""

from __future__ import annotations

from orchestrator import pipeline
from orchestrator.deploy.local import RELEASE_MARKER, http
from orchestrator.git import bare_repo_path, git
from orchestrator.procs import pids_with_marker
from orchestrator.stages import Next, StageContext
from projects import runs
from projects.models import Deployment, PipelineRun, StageRun

ORDER = ["architect", "preparer", "developer", "tester", "deployer", "notify"]


def drive(run_id: int, until: str = "notify", start: str | None = None) -> None:
    """Run the stages in order in this process, as the chain would, looping on test failures
    and stopping where the run waits for a person. Like ``pipeline.start``, it begins at the
    run's first open stage (a resumed run goes on where it stopped), or at ``start`` (the rest
    of a chain that is under way)."""
    i = ORDER.index(start or runs.first_open_stage(PipelineRun.objects.get(id=run_id)))
    while i < len(ORDER):
        outcome = pipeline.execute(stage=ORDER[i], run_id=run_id, task_id="in-process")
        if outcome is None and PipelineRun.objects.get(id=run_id).status == "waiting_human":
            return  # the chain stops here until a person answers
        assert outcome is not None, f"{ORDER[i]} was busy"
        if ORDER[i] == until:
            return
        i = ORDER.index("developer") if outcome is Next.LOOP else i + 1


def commits_on(slug: str, branch: str) -> int:
    return int(git("rev-list", "--count", branch, cwd=bare_repo_path(slug)).stdout)


def rerun_side_effect(run_id: int, stage: str):
    """Run a finished stage's work again, as a worker that crashed before recording it would."""
    run = PipelineRun.objects.select_related("project").get(id=run_id)
    row = StageRun.objects.filter(run=run, stage=stage).order_by("-iteration").first()
    return pipeline.STAGES[stage].module.run(StageContext(run=run, stage_run=row, project=run.project))


def test_full_pipeline_in_process_deploys_a_service_that_answers(new_run):
    run = new_run()
    drive(run.id)
    run.refresh_from_db()
    assert run.status == "succeeded", run.error_message
    live = Deployment.objects.get(run=run, status="live")
    assert run.result_message.endswith(f"Service running at {live.url}")
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1


def test_preparer_twice_makes_one_scaffold_commit(new_run):
    run = new_run()
    drive(run.id, until="preparer")
    slug = run.project.__class__.objects.get(id=run.project_id).slug
    assert commits_on(slug, run.branch) == 1
    again = rerun_side_effect(run.id, "preparer")
    assert again.output["reused"] is True
    assert commits_on(slug, run.branch) == 1


def test_developer_twice_makes_one_commit(new_run):
    run = new_run()
    drive(run.id, until="developer")
    slug = run.project.__class__.objects.get(id=run.project_id).slug
    assert commits_on(slug, run.branch) == 2  # scaffold + implementation
    first = StageRun.objects.get(run=run, stage="developer").output["commit"]
    again = rerun_side_effect(run.id, "developer")
    assert again.output["commit"] == first
    assert commits_on(slug, run.branch) == 2


def test_deployer_twice_keeps_one_deployment_and_one_process(new_run):
    run = new_run()
    drive(run.id, until="deployer")
    deployment = Deployment.objects.get(run=run)
    again = rerun_side_effect(run.id, "deployer")
    assert again.output["reused"] is True
    assert Deployment.objects.filter(project=run.project_id).count() == 1
    assert pids_with_marker(RELEASE_MARKER, str(deployment.id)) == [deployment.pid]


def test_a_duplicate_task_for_a_finished_stage_changes_nothing(new_run):
    run = new_run()
    drive(run.id, until="architect")
    row = StageRun.objects.get(run=run, stage="architect")
    assert pipeline.execute(stage="architect", run_id=run.id, task_id="duplicate") is Next.CONTINUE
    row_after = StageRun.objects.get(id=row.id)
    assert (row_after.attempt, row_after.status, row_after.output) == (1, "succeeded", row.output)


def test_a_stage_cannot_start_before_the_stage_before_it_is_done(new_run):
    run = new_run()
    assert pipeline.execute(stage="developer", run_id=run.id, task_id="too-early") is None
    assert StageRun.objects.get(run=run, stage="developer").status == "pending"


def test_a_description_the_scripted_architect_cannot_map_fails_the_run_clearly(new_run):
    run = new_run("a bot that tells the weather")
    drive(run.id, until="architect")
    run.refresh_from_db()
    assert run.status == "failed"
    assert run.error_code == "description_not_understood"
    assert "weather" in run.error_message and "LLM" in run.error_message
    # The rest of the chain is skipped, and the person is still told.
    drive(run.id, start="preparer")
    run.refresh_from_db()
    assert run.result_message.startswith(f"Project #{run.project_id}: run #{run.id} failed at the architect stage")
    assert set(StageRun.objects.filter(run=run).values_list("stage", "status")) >= {
        ("preparer", "skipped"),
        ("deployer", "skipped"),
        ("notify", "succeeded"),
    }


def test_a_deployer_rerun_after_going_live_moves_main_and_stops_the_release_it_replaced(new_run):
    import subprocess
    import sys

    run = new_run()
    drive(run.id, until="deployer")
    live = Deployment.objects.get(run=run)
    slug = run.project.__class__.objects.get(id=run.project_id).slug
    scaffold = StageRun.objects.get(run=run, stage="preparer").output["commit"]
    # The worker died right after going live: the release it replaced still runs, main is old.
    git("update-ref", "refs/heads/main", scaffold, cwd=bare_repo_path(slug))
    old = Deployment.objects.create(
        project_id=run.project_id, run=run, port=live.port + 1, commit_sha=scaffold, status="stopping"
    )
    old_release = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"],
        env={RELEASE_MARKER: str(old.id)},
        start_new_session=True,
    )
    Deployment.objects.filter(id=old.id).update(pid=old_release.pid)

    again = rerun_side_effect(run.id, "deployer")
    assert (again.output["reused"], again.output["replaced"]) == (True, [old.id])
    assert old_release.wait(timeout=10) is not None
    assert Deployment.objects.get(id=old.id).status == "stopped"
    assert git("rev-parse", "main", cwd=bare_repo_path(slug)).stdout.strip() == live.commit_sha
    assert pids_with_marker(RELEASE_MARKER, str(live.id)) == [live.pid]
