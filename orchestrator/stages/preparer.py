"""Preparer (no LLM): a repository scaffolded from the bundled template, on branch run-<id>.

A later run builds on what serves: the live release's commit (after a rollback that is not
``main``, which the Deployer moved to the last deployed commit), else ``main``. A ``redeploy`` run
makes no commit: its branch is the live commit itself, so the release is built from the very same
code (the Developer hands it on with no agent turn, the Tester tests that commit again).

The scaffold is made by copier from ``templates/<kind>`` (web_service, telegram_bot); TASK.md and AGENTS.md tell the
developer agent what to build and how to report. Idempotent: an existing branch is reused.

Where the code lives is the code host's business (``orchestrator.codehost``): the run works in the
host's mirror (a bare repository workers clone and push to); on GitHub the repository is created
or reused first, the scaffold carries the factory's marker (and a CI workflow), a first run's
scaffold becomes ``main`` there, and a later run starts from GitHub's ``main``. A repository of
the project's name that is someone else's (``RepoTaken``, code ``repo_name_taken``) makes the run
ask the person for another name (``orchestrator.escalations``); their answer renames the project
and this stage runs again under the new name.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import copier
from django.conf import settings

from orchestrator.codehost import get_host
from orchestrator.git import branch_sha, git
from orchestrator.stages import Outcome, StageContext, StageFailed
from projects.models import PipelineRun
from projects.specs import ProjectSpec
from secrets_meta import services as secret_services

SPEC_PATH = ".factory/spec.json"


def run(ctx: StageContext) -> Outcome:
    spec = ProjectSpec.model_validate(ctx.project.spec)
    host = get_host()
    repo = host.prepare(ctx.project)
    if host.name != "local":  # values put before the repository existed get their copy there
        secret_services.secrets_sync(project_id=ctx.project.id)
    bare = repo.mirror
    branch = ctx.run.branch
    where = {"repo": str(bare), "host": host.name, "repo_url": repo.url}
    existing = branch_sha(bare, branch)
    if existing:
        if ctx.run.kind != PipelineRun.Kind.REDEPLOY:  # a crash may have come before the push
            host.publish(ctx.project, repo, branch=branch, sha=existing)
        return Outcome({**where, "branch": branch, "commit": existing, "reused": True})
    base = host.base_commit(ctx.project, repo, ctx.run.kind)
    if ctx.run.kind == PipelineRun.Kind.REDEPLOY:
        if not base:
            raise StageFailed("The project has no deployed commit to redeploy.", code="nothing_deployed")
        git("branch", branch, base, cwd=bare, check=False)  # a concurrent attempt may have made it
        sha = branch_sha(bare, branch)
        if not sha:
            raise StageFailed("Could not make the redeploy's branch.", code="git_failed")
        return Outcome({**where, "branch": branch, "commit": sha, "base": base, "reused": False})
    template = Path(settings.BASE_DIR) / "templates" / spec.kind
    if not template.is_dir():
        raise StageFailed(f"There is no project template for kind {spec.kind!r}.", code="no_template")
    scratch_root = Path(settings.FACTORY_HOME) / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=scratch_root) as scratch:
        work = Path(scratch) / "repo"
        if base:  # a later run builds on what is deployed
            git("clone", "--quiet", "--branch", "main", str(bare), str(work))
            git("checkout", "--quiet", "-B", "main", base, cwd=work)
        else:
            copier.run_copy(
                str(template),
                str(work),
                defaults=True,
                quiet=True,
                unsafe=False,
                data={
                    "project_name": spec.name,
                    "project_slug": ctx.project.slug,
                    "summary": spec.summary or spec.name,
                },
            )
            git("init", "--quiet", cwd=work)
        (work / ".factory").mkdir(exist_ok=True)
        (work / SPEC_PATH).write_text(json.dumps(ctx.project.spec, indent=2) + "\n")
        (work / "TASK.md").write_text(render_task(spec, ctx.run.id, change=ctx.run.request))
        (work / "AGENTS.md").write_text(AGENTS_MD)
        for path, content in host.scaffold_files(ctx.project, spec.kind).items():
            if not (work / path).exists():  # a later run keeps what is there (a person's own CI)
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(content)
        git("add", "-A", cwd=work)
        git("commit", "--quiet", "--allow-empty", "-m", f"Prepare run {ctx.run.id}: {spec.name}", cwd=work)
        push = git("push", "--quiet", str(bare), f"HEAD:refs/heads/{branch}", cwd=work, check=False)
        sha = git("rev-parse", "HEAD", cwd=work).stdout.strip()
    if push.returncode != 0:  # another attempt pushed first: use its branch
        sha = branch_sha(bare, branch)
        if not sha:
            raise StageFailed(f"Could not push the scaffold: {push.stderr.strip()[-300:]}", code="git_failed")
    host.publish(ctx.project, repo, branch=branch, sha=sha)
    return Outcome({**where, "branch": branch, "commit": sha, "base": base or None, "reused": False})


def render_task(spec: ProjectSpec, run_id: int, change: str = "") -> str:
    features = "\n".join(f"- **{f.name}**: {f.summary}" for f in spec.features)
    if spec.kind == "telegram_bot":
        checks_title = "Conversation checks (the deployer says these to the live bot, in one chat, in order)"
        checks = "\n".join(
            f"- a person sends `{c.send}`; the reply contains `{c.expect_contains}`" for c in spec.conversation
        )
        implement = (
            "Every feature is a command (or handler) added by `register(bot)` in `handlers.py` "
            "(pyTelegramBotAPI), covered by tests under `tests/` that talk to the bot through the "
            "`chat` fixture (a loopback Bot API in `tests/conftest.py`)."
        )
        runtime = "TELEGRAM_API_URL, PORT, HOST, RELEASE"
    else:
        checks_title = "Acceptance checks (the deployer runs these against the live service)"
        checks = "\n".join(
            f"- `{c.method} {c.path}` answers {c.expect_status}"
            + (f" containing `{c.expect_contains}`" if c.expect_contains else "")
            for c in spec.acceptance
        )
        implement = "Every feature is implemented in `handlers.py` and covered by tests under `tests/`."
        runtime = "PORT, HOST, RELEASE"
    env = "\n".join(f"- `{v.name}` ({v.source}): {v.description}" for v in spec.env) or f"- none beyond {runtime}"
    changed = (
        f"\n## Change requested\nThe project is live; the person asked: {change}\n"
        "Keep every existing feature and its tests working; add what is new.\n"
        if change
        else ""
    )
    return f"""# Task: {spec.name} (run {run_id})

{spec.summary}
{changed}
## Features to implement
{features}

## {checks_title}
{checks or "- none"}

## Environment contract (names only; values are injected at deploy time)
{env}

## Definition of done
- {implement}
- `python -m pytest` passes in this repository.
- Your work is committed and pushed to this branch, and you reported your result (see AGENTS.md).
"""


AGENTS_MD = """# Working agreement for agents

- Read `TASK.md`; `.factory/spec.json` is the same task as data.
- The service (or bot) is `app.py`, the same for every project: do not change it or its /health
  contract; features go in `handlers.py`.
- Tests go under `tests/`; run them with `python -m pytest` before you report.
- Commit your work and push it to the current branch.
- Secrets: you only ever see variable names, never values; never write a value into a file.
- When you stop, report exactly one JSON line as the last line of your output:
  `{"status": "complete" | "blocked" | "failed", "commit": "<sha>", "summary": "...", "question": "..."}`
"""
