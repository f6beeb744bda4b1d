"""The `github` code host against a loopback GitHub (tests/fakes/github_server.py): real PyGithub
over REST v3, real git over smart HTTP (``git http-backend``), the stages driven in this process
against the real database, the scripted agent in real worker processes and a real release."""

from __future__ import annotations

import base64
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from agents import services as agent_services
from config import github as gh
from config.errors import PermanentError, TransientError
from orchestrator import pipeline
from orchestrator.codehost import get_host
from orchestrator.deploy.local import http
from orchestrator.git import git
from orchestrator.stages import Next, StageContext
from orchestrator.stages import developer as developer_stage
from projects import runs, services
from projects.models import Deployment, PipelineRun, Project, RunEvent, StageRun
from tests.conftest import rendered_logs
from tests.fakes.github_server import FakeGitHub

TOKEN = "ghp_" + "T0kenNeverShown" * 2
ORDER = ["architect", "preparer", "developer", "tester", "deployer", "notify"]


@pytest.fixture
def github(settings, tmp_path):
    server = FakeGitHub(tmp_path / "github", tokens=(TOKEN,), orgs=("acme",)).start()
    settings.CODE_HOST = ""
    settings.GITHUB_ORG = "acme"
    settings.GITHUB_TOKEN = TOKEN
    settings.GITHUB_APP_ID = ""
    settings.GITHUB_API_URL = server.api_url
    settings.GITHUB_GIT_URL = ""
    settings.GITHUB_SECONDS_BETWEEN_WRITES = 0
    settings.GITHUB_CHECKS_POLL_SECONDS = 0.2
    settings.GITHUB_CHECKS_WAIT_IN_STAGE = 20
    settings.GITHUB_RATE_LIMIT_RESERVE = 10
    yield server
    server.stop()


def drive(run_id: int, until: str = "notify", start: str | None = None) -> list[Next | None]:
    """The stages in order in this process, as the chain would run them: a loop goes back to
    the Developer, a wait (Next.WAIT: a transient error or a busy resource) runs the stage again,
    as the task's retry would."""
    seen = []
    i = ORDER.index(start or runs.first_open_stage(PipelineRun.objects.get(id=run_id)))
    while i < len(ORDER):
        outcome = pipeline.execute(stage=ORDER[i], run_id=run_id, task_id="in-process")
        seen.append((ORDER[i], outcome))
        assert len(seen) < 40, seen
        if outcome is None:
            return seen
        if outcome is Next.WAIT:
            continue
        if ORDER[i] == until:
            return seen
        i = ORDER.index("developer") if outcome is Next.LOOP else i + 1
    return seen


def finished(run_id: int) -> PipelineRun:
    run = PipelineRun.objects.select_related("project").get(id=run_id)
    return run


def test_a_whole_run_on_github_ends_in_a_merged_pull_request_and_a_live_release(new_run, github, user):
    run = new_run()
    drive(run.id)
    run = finished(run.id)
    assert run.status == "succeeded", run.error_message
    project = run.project
    full = f"acme/{project.slug}"
    repo = github.repos[full]
    assert repo.private
    # The person gets a repository link with their project (and in the final message).
    assert project.repo_url == f"{github.url}/{full}"
    assert f"Code: {github.url}/{full}\n" in run.result_message
    # The marker says whose it is; the scaffold carries a CI workflow.
    marker = json.loads(github.git(repo, "show", "main:.factory/project.json"))
    assert marker["project_id"] == project.id
    assert "tests.yml" in github.git(repo, "ls-tree", "--name-only", "main:.github/workflows")
    # The run's pull request: squash-merged at the deployed commit, its branch deleted.
    live = Deployment.objects.get(run=run, status="live")
    (pull,) = repo.pulls.values()
    assert pull["merged"] and pull["state"] == "closed" and pull["head"] == run.branch
    assert pull["head_sha"] == live.commit_sha
    assert github.branch(full, run.branch) is None
    main = github.branch(full, "main")
    assert main == pull["merge_commit_sha"]
    assert github.git(repo, "rev-parse", "main^{tree}") == github.git(repo, "rev-parse", f"{live.commit_sha}^{{tree}}")
    # The Tester's report: a commit status on the head SHA and a comment on the pull request.
    (status,) = repo.statuses[live.commit_sha]
    assert status["context"] == "factory/tests" and status["state"] == "success"
    assert any("Factory tests passed" in c["body"] for c in repo.comments[pull["number"]])
    # A report made again (the Tester ran again after a fault) adds no second status; a changed
    # verdict does, and GitHub's newest status is the one that counts.
    host, tested = get_host(), StageRun.objects.get(run=run, stage="tester").output
    summary = status["description"]
    host.report_tests(project, host.repo(project), branch=run.branch, sha=live.commit_sha, ok=True, summary=summary)
    assert len(repo.statuses[live.commit_sha]) == 1 and tested["commit"] == live.commit_sha
    host.report_tests(project, host.repo(project), branch=run.branch, sha=live.commit_sha, ok=False, summary="1 failed")
    assert [s["state"] for s in repo.statuses[live.commit_sha]] == ["success", "failure"]
    repo.statuses[live.commit_sha].pop()
    services.project_set_code_state(project_id=project.id, ci_status="success")
    # The deploy waited for the check runs of exactly that commit.
    assert repo.check_runs[live.commit_sha][0]["conclusion"] == "success"
    assert ("GET", f"/api/v3/repos/{full}/commits/{live.commit_sha}/check-runs") in github.requests
    project.refresh_from_db()
    assert project.pull_request_number is None and project.ci_status == "success"
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1

    # A change starts from GitHub's main (the squash commit) and lands as the next pull request.
    change = services.project_request_change(project_id=project.id, description="also roll dice", user=user)
    drive(change.id)
    change = finished(change.id)
    assert change.status == "succeeded", change.error_message
    prepared = StageRun.objects.get(run=change, stage="preparer").output
    assert prepared["base"] == main
    second = repo.pulls[2]
    assert second["merged"] and github.git(repo, "rev-parse", "main^") == main
    live = Deployment.objects.get(run=change, status="live")
    assert "roll" in http(live.url + "roll")[1].lower() or http(live.url + "roll")[0] == 200


def test_an_existing_foreign_repository_is_refused_and_left_alone(new_run, github):
    run = new_run()
    drive(run.id, until="architect")
    slug = Project.objects.get(id=run.project_id).slug
    theirs = github.add_repo(f"acme/{slug}", description="someone's", files={"README.md": "ours, not yours\n"})
    before = github.branch(theirs.full_name, "main")
    drive(run.id, start="preparer")
    run = finished(run.id)
    assert run.status == "waiting_human"  # the person is asked for another name (test_repo_name_taken.py)
    question = run.escalations.get(status="open")
    assert question.reason == "repo_name_taken" and question.stage == "preparer"
    assert f"acme/{slug} already exists on GitHub" in question.question
    assert "another name" in question.question
    assert github.branch(theirs.full_name, "main") == before
    assert not any(m == "POST" and "git-receive-pack" in p for m, p in github.requests)


def test_a_repository_deleted_by_hand_is_reported_not_recreated(new_run, github, user):
    run = new_run()
    drive(run.id)
    assert finished(run.id).status == "succeeded"
    project = Project.objects.get(id=run.project_id)
    github.delete_repo(f"acme/{project.slug}")
    already = len(github.requests)
    change = services.project_request_change(project_id=project.id, description="also roll dice", user=user)
    drive(change.id)
    change = finished(change.id)
    assert change.status == "failed" and change.error_code == "repo_deleted"
    assert "does not recreate" in change.error_message
    assert f"acme/{project.slug}" not in github.repos
    assert ("GET", f"/api/v3/repos/acme/{project.slug}") in github.requests[already:]
    assert not any(m == "POST" and p == "/api/v3/orgs/acme/repos" for m, p in github.requests[already:])


def test_a_secondary_rate_limit_is_retried_later(new_run, github):
    run = new_run()
    github.fail(
        "POST",
        r"/pulls$",
        403,
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        headers={"Retry-After": "1"},
    )
    seen = drive(run.id)
    assert ("tester", Next.WAIT) in seen
    run = finished(run.id)
    assert run.status == "succeeded", run.error_message
    tester = StageRun.objects.get(run=run, stage="tester")
    assert tester.transient_failures == 1
    repo = github.repos[f"acme/{run.project.slug}"]
    assert len(repo.pulls) == 1 and repo.pulls[1]["merged"]


def test_a_ci_failure_goes_back_to_the_developer_with_its_log_excerpt(new_run, github):
    # The scripted developer's first commit passes its own tests (and would not serve); GitHub's
    # CI fails it, so it never reaches a release: the second iteration's commit is deployed.
    agent_services.agent_config_set(role="developer", options={"broken_release_times": 1})
    github.ci_conclusions = ["failure", "success"]
    github.ci_failure_text = "tests/test_greet.py::test_greet FAILED: KeyError: 'LANG' (on GitHub Actions)"
    run = new_run()
    seen = drive(run.id, until="deployer")
    assert seen[-1] == ("deployer", Next.LOOP)
    run = finished(run.id)
    assert run.iteration == 2
    # What the Developer's next turn is given: the failed check with its log excerpt.
    row = StageRun.objects.get(run=run, stage="developer", iteration=2)
    report = developer_stage._previous_report(StageContext(run=run, stage_run=row, project=run.project))
    assert report.failing[0].name == "ci: GitHub checks"
    assert "KeyError: 'LANG' (on GitHub Actions)" in report.failing[0].message
    drive(run.id)
    run = finished(run.id)
    assert run.status == "succeeded", run.error_message
    assert run.iteration == 2
    sent_back = RunEvent.objects.get(run=run, type=RunEvent.Type.TESTS_FAILED)
    assert sent_back.stage == "deployer"
    # The release is the commit whose checks passed, never the one that failed.
    repo = github.repos[f"acme/{run.project.slug}"]
    live = Deployment.objects.get(run=run, status="live")
    assert repo.check_runs[live.commit_sha][0]["conclusion"] == "success"
    failed = [sha for sha, rs in repo.check_runs.items() if rs[0]["conclusion"] == "failure"]
    assert failed and live.commit_sha not in failed
    assert not Deployment.objects.filter(commit_sha__in=failed).exists()


def _cmdlines() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                continue
    return found


def test_a_push_leaves_the_token_in_no_log_event_or_process_list(new_run, github):
    snapshots: list[list[str]] = []
    github.on_git = lambda: snapshots.append(_cmdlines())
    with rendered_logs() as logs:
        run = new_run()
        drive(run.id)
    run = finished(run.id)
    assert run.status == "succeeded", run.error_message
    # The process table was looked at while the factory's git talked to GitHub.
    assert any(any("git" in c and ("push" in c or "send-pack" in c) for c in s) for s in snapshots)
    assert not any(TOKEN in c for s in snapshots for c in s)
    # git authenticated with a header (Basic x-access-token), not with a token in the URL.
    assert "git-basic" in github.auth_seen
    text = logs.getvalue()
    assert "github_pushed" in text
    assert TOKEN not in text and base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode() not in text
    for event in RunEvent.objects.filter(run=run):
        assert TOKEN not in json.dumps(event.payload)
    for row in StageRun.objects.filter(run=run):
        assert TOKEN not in json.dumps(row.output) and TOKEN not in (row.error or "")
    project = Project.objects.get(id=run.project_id)
    assert TOKEN not in project.repo_url
    config = get_host().repo(project).mirror / "config"
    assert TOKEN not in config.read_text()


def _rsa_pem() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_a_github_app_installation_token_is_minted_once_and_renewed_before_it_expires(github, settings, tmp_path):
    private, public = _rsa_pem()
    github.add_app("4242", public, installation_id=77)
    key_file = tmp_path / "app.pem"
    key_file.write_text(private)
    os.chmod(key_file, 0o600)
    settings.GITHUB_TOKEN = ""
    settings.GITHUB_APP_ID = "4242"
    settings.GITHUB_APP_PRIVATE_KEY = ""
    settings.GITHUB_APP_PRIVATE_KEY_PATH = str(key_file)
    settings.GITHUB_APP_INSTALLATION_ID = "77"
    gh._tokens.clear()
    first = gh.token()
    assert first.startswith("ghs_") and gh.token() == first and github.minted == [first]
    # The token works for REST calls (PyGithub) and for git over HTTPS (a header from the env) ...
    assert gh.client().get_organization("acme").login == "acme"
    theirs = github.add_repo("acme/existing", files={"README.md": "hello\n"})
    listed = git("ls-remote", f"{github.url}/acme/existing.git", "main", env=gh.git_auth_env()).stdout
    assert listed.split()[0] == github.branch(theirs.full_name, "main")
    assert "git-basic" in github.auth_seen
    # ... and is renewed once it is within the margin of its expiry.
    for minted in gh._tokens.values():
        minted.expires_at = datetime.now(UTC) + gh.TOKEN_REFRESH_MARGIN - timedelta(seconds=1)
    second = gh.token()
    assert second != first and github.minted == [first, second]


def test_a_wrong_app_key_is_refused_with_a_clear_error(github, settings):
    _, public = _rsa_pem()
    other_private, _ = _rsa_pem()
    github.add_app("4242", public, installation_id=77)
    settings.GITHUB_TOKEN = ""
    settings.GITHUB_APP_ID = "4242"
    settings.GITHUB_APP_PRIVATE_KEY = other_private
    settings.GITHUB_APP_INSTALLATION_ID = "77"
    gh._tokens.clear()
    with pytest.raises(gh.GitHubForbidden, match="refused the factory's credentials"):
        gh.token()


@pytest.mark.parametrize(
    ("status", "message", "headers", "kind", "code"),
    [
        (502, "Server Error", {}, TransientError, "github_unavailable"),
        (
            403,
            "You have exceeded a secondary rate limit.",
            {"Retry-After": "30"},
            TransientError,
            "github_rate_limited",
        ),
        (403, "API rate limit exceeded", {"X-RateLimit-Remaining": "0"}, TransientError, "github_rate_limited"),
        (403, "Resource not accessible by integration", {}, PermanentError, "github_forbidden"),
        (404, "Not Found", {}, PermanentError, "github_not_found"),
        (422, "Validation Failed", {}, PermanentError, "github_unprocessable"),
    ],
)
def test_github_errors_are_sorted_into_transient_and_clear_permanent_ones(github, status, message, headers, kind, code):
    github.orgs.add("other")
    github.fail("GET", r"^/orgs/other$", status, message, headers=headers)
    with pytest.raises(kind) as raised, gh.errors("reading the organization"):
        gh.client().get_organization("other")
    assert raised.value.code == code
    assert message.split(".")[0] in raised.value.message
    if "Retry-After" in headers:
        assert raised.value.retry_after == 30


def test_a_timeout_is_transient(github, settings):
    settings.GITHUB_API_URL = "http://127.0.0.1:9/api/v3"  # nothing listens: refused at once
    with pytest.raises(TransientError, match="GitHub did not answer"), gh.errors("reading the organization"):
        gh.client().get_organization("acme")


def test_without_github_settings_the_local_host_is_chosen(settings):
    settings.CODE_HOST = ""
    settings.GITHUB_ORG = ""
    settings.GITHUB_TOKEN = ""
    settings.GITHUB_APP_ID = ""
    assert get_host().name == "local"


def test_the_github_actions_store_seals_a_projects_secrets_into_its_repository(new_run, github, settings):
    from secrets_meta import services as secret_services
    from secrets_meta.models import SecretMeta
    from secrets_meta.stores import get_store, project_scope

    settings.SECRET_STORE = "github_actions"
    run = new_run()
    with rendered_logs() as logs:
        # Before the repository exists the value waits in the vault, not yet synced.
        early = secret_services.secret_put(
            project_id=run.project_id, key="WEATHER_KEY", value="s3cr3t-early", actor="t"
        )
        assert early.store == "github_actions" and early.synced_at is None
        drive(run.id, until="preparer")
        project = Project.objects.get(id=run.project_id)
        repo = github.repos[f"acme/{project.slug}"]
        # The Preparer made the repository and synced it: a sealed box for the repository's key.
        assert repo.secret_value("WEATHER_KEY") == "s3cr3t-early"
        assert "s3cr3t-early" not in repo.secrets["WEATHER_KEY"]["encrypted_value"]
        assert SecretMeta.objects.get(project_id=project.id, key="WEATHER_KEY").synced_at is not None
        # Once it exists, a value is written there at once; the Deployer still reads the vault.
        later = secret_services.secret_put(project_id=project.id, key="WEATHER_KEY", value="s3cr3t-later", actor="t")
        assert later.synced_at is not None
        assert repo.secret_value("WEATHER_KEY") == "s3cr3t-later"
        assert get_store().get(project_scope(project.id), "WEATHER_KEY") == "s3cr3t-later"
        secret_services.secret_delete(project_id=project.id, key="WEATHER_KEY", actor="t")
        assert "WEATHER_KEY" not in repo.secrets
    assert "s3cr3t" not in logs.getvalue() and "secret_synced" in logs.getvalue()


def test_the_api_shows_the_repository_its_pull_request_and_ci_status_in_both_renderings(api, user):
    from django.db import connection
    from django.utils import timezone

    from projects import selectors
    from projects.api import render_projects

    on_github, _ = services.project_create(owner=user, description="a web service that greets people by name")
    local, _ = services.project_create(owner=user, description="a web service that rolls dice")
    services.project_set_repo(project_id=on_github.id, repo_url="https://github.example/acme/greeter")
    services.project_set_code_state(
        project_id=on_github.id,
        pull_request_number=7,
        pull_request_url="https://github.example/acme/greeter/pull/7",
        ci_status="pending",
        ci_updated_at=timezone.now(),
    )
    services.project_set_repo(project_id=local.id, repo_url="/srv/factory/git/dice.git")
    listed = {p["id"]: p for p in api.get("/api/projects/").json()["results"]}
    assert listed[on_github.id]["repo_url"] == "https://github.example/acme/greeter"
    assert listed[on_github.id]["pull_request_number"] == 7
    assert listed[on_github.id]["pull_request_url"].endswith("/pull/7")
    assert listed[on_github.id]["ci_status"] == "pending"
    # The local code host's repository is a path on the server: never shown.
    assert listed[local.id]["repo_url"] is None and listed[local.id]["ci_status"] is None
    detail = api.get(f"/api/projects/{on_github.id}/").json()
    assert detail["repo_url"] == "https://github.example/acme/greeter" and detail["ci_status"] == "pending"
    if connection.vendor == "postgresql":  # the body PostgreSQL renders is the one rendered from rows
        total, text = selectors.project_page_json(user, limit=10, offset=0)
        rows = list(selectors.project_rows(user, with_spec=False)[:10])
        assert json.loads(text) == json.loads(json.dumps(render_projects(rows)))


@pytest.mark.e2e
def test_through_a_real_worker_a_description_becomes_a_merged_pull_request_and_a_live_release(
    celery_procs, user, github
):
    """The whole run in a real Celery worker process, GitHub's secondary rate limit on the first
    pull request included (the task retries later); the token in no line the worker logged."""
    from tests.conftest import wait_for_run

    github.fail(
        "POST",
        r"/pulls$",
        403,
        "You have exceeded a secondary rate limit. Please wait a few minutes before you try again.",
        headers={"Retry-After": "1"},
    )
    celery_procs.worker(
        GITHUB_ORG="acme",
        GITHUB_TOKEN=TOKEN,
        GITHUB_API_URL=github.api_url,
        GITHUB_SECONDS_BETWEEN_WRITES="0",
        GITHUB_CHECKS_POLL_SECONDS="1",
        WORKER_QUOTA_RETRY_SECONDS="1",
    )
    project, run = services.project_create(owner=user, description="a web service that greets people by name")
    run = wait_for_run(run.id, procs=celery_procs)
    assert run.status == "succeeded", run.error_message
    project.refresh_from_db()
    repo = github.repos[f"acme/{project.slug}"]
    assert project.repo_url == f"{github.url}/acme/{project.slug}"
    assert repo.pulls[1]["merged"] and github.branch(repo.full_name, run.branch) is None
    assert StageRun.objects.get(run=run, stage="tester").transient_failures == 1
    live = Deployment.objects.get(run=run, status="live")
    assert repo.statuses[live.commit_sha][0]["state"] == "success"
    assert http(live.url + "greet?name=Ada")[1].count("Hello, Ada!") == 1
    logs = celery_procs.logs(tail=None)
    assert "github_pushed" in logs and "github_merged" in logs
    assert TOKEN not in logs


def test_pending_checks_make_the_deploy_wait_without_starting_a_release(new_run, github, settings):
    settings.GITHUB_CHECKS_WAIT_IN_STAGE = 0  # no polling inside the task: give the claim back at once
    github.ci_polls = 2
    run = new_run()
    drive(run.id, until="tester")
    assert pipeline.execute(stage="deployer", run_id=run.id, task_id="t") is Next.WAIT
    assert pipeline.execute(stage="deployer", run_id=run.id, task_id="t") is Next.WAIT
    assert not Deployment.objects.filter(run=run).exists()
    assert Project.objects.get(id=run.project_id).ci_status == "pending"
    deployer = StageRun.objects.get(run=run, stage="deployer")
    assert deployer.status == "pending" and deployer.transient_failures == 0  # waiting is not failing
    drive(run.id, start="deployer")
    assert finished(run.id).status == "succeeded"


def test_checks_are_polled_less_when_few_requests_are_left_this_hour(new_run, github, settings):
    settings.GITHUB_RATE_LIMIT_RESERVE = 100
    run = new_run()
    drive(run.id, until="tester")
    github.remaining = 50  # X-RateLimit-Remaining below the reserve: wait for the window's reset
    project = Project.objects.get(id=run.project_id)
    commit = StageRun.objects.get(run=run, stage="tester").output["commit"]
    checks = get_host().checks(project, get_host().repo(project), sha=commit)
    assert checks.state == "pending"
    assert checks.retry_in > 3000  # the fake's window resets in an hour


def test_a_bot_on_github_goes_live_from_a_merged_pull_request_and_its_token_is_not_in_the_repository(
    new_run, github, settings
):
    from orchestrator import bots
    from orchestrator.telegram.standin import StandIn, make_user

    botapi = StandIn().start()
    settings.TELEGRAM_API_URL, settings.BOTS_API_URL = botapi.api_url, botapi.base_url
    try:
        token = botapi.add_bot("greeter_gh_bot")
        bots.pool_add(token)
        run = new_run("a telegram bot that greets people by name")
        drive(run.id)
        run = finished(run.id)
        assert run.status == "succeeded", run.error_message
        project = run.project
        repo = github.repos[f"acme/{project.slug}"]
        (pull,) = repo.pulls.values()
        live = Deployment.objects.get(run=run, status="live")
        assert pull["merged"] and pull["head_sha"] == live.commit_sha
        assert f"Code: {github.url}/acme/{project.slug}\n" in run.result_message
        # The bot's token is a secret: in no file of any commit pushed to GitHub.
        assert (
            github.git(
                repo,
                "grep",
                "-I",
                "-l",
                token.split(":")[1],
                *github.git(repo, "rev-list", "--all").split(),
                check=False,
            )
            == ""
        )
        stranger = make_user(990002, first_name="Grace", username="grace_g")
        botapi.say(token, "/hello Ada", user=stranger)
        assert "Hello, Ada!" in botapi.wait_for_reply(token, stranger["id"], "Hello, Ada!", timeout=15)["text"]
    finally:
        botapi.stop()
