"""The GitHub code host: a private repository ``<GITHUB_ORG>/<slug>`` per project.

- The repository is created once and carries the factory's marker (``.factory/project.json``:
  this installation and the project's id; an empty repository we just created is known by its
  description). One that exists without our marker is someone else's: refused, never reused. One
  that was ours and is gone was deleted by hand: reported, never silently recreated.
- Every REST call goes through PyGithub (``config.github``); git speaks smart HTTP with the token
  in an ``Authorization`` header given through git's environment, never in a URL or argv.
- The run's branch ``run-<id>`` carries the scaffold and every implementation commit; its pull
  request gets the Tester's report as a comment and a ``factory/tests`` commit status; the check
  runs of the exact commit to deploy gate the deploy; a deploy squash-merges the pull request and
  deletes the branch, and ``main`` (the start of the next run) comes back into the mirror.
"""

from __future__ import annotations

import json
import subprocess

import structlog
from django.conf import settings
from django.utils import timezone

from config import github as gh
from config.errors import PermanentError, TransientError
from orchestrator.codehost.base import Checks, PullRequest, Repo, RepoGone, RepoTaken
from orchestrator.git import bare_repo_path, branch_sha, ensure_bare_repo, git
from orchestrator.runtime.base import factory_instance
from projects import services
from projects.models import Deployment, PipelineRun, Project

log = structlog.get_logger(__name__)

MARKER_PATH = ".factory/project.json"
STATUS_CONTEXT = "factory/tests"
FAILED = {"failure", "timed_out", "cancelled", "action_required", "startup_failure", "stale"}
EXCERPT = 1500
_TRANSIENT_GIT = (
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "the requested url returned error: 5",
    "rpc failed",
    "early eof",
)


WORKFLOW_PATH = ".github/workflows/tests.yml"


def workflow(kind: str) -> str:
    """The scaffold's CI: the project's own tests on every push (the deploy waits for them)."""
    deps = "pytest pyTelegramBotAPI" if kind == "telegram_bot" else "pytest"
    return f"""name: tests
on: push
jobs:
  tests:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-python@v5
        with:
          python-version: "3.11"
      - run: python -m pip install {deps}
      - run: python -m pytest -q
"""


def marker(project: Project) -> dict:
    return {"factory": factory_instance(), "project_id": project.id, "slug": project.slug}


def marker_description(project: Project) -> str:
    return f"Service factory project {factory_instance()}/{project.id}"


class GitHubHost:
    name = "github"

    def __init__(self) -> None:
        self.org = settings.GITHUB_ORG

    # --- the repository ------------------------------------------------------------------
    def full_name(self, project: Project) -> str:
        return f"{self.org}/{project.slug}"

    def web_url(self, project: Project) -> str:
        return f"{gh.git_base_url()}/{self.full_name(project)}"

    def repo(self, project: Project) -> Repo:
        return Repo(
            mirror=bare_repo_path(project.slug),
            url=project.repo_url or self.web_url(project),
            host=self.name,
            full_name=self.full_name(project),
        )

    def prepare(self, project: Project) -> Repo:
        client = gh.client()
        full = self.full_name(project)
        remote = self._get(client, full)
        if remote is None:
            if project.repo_url.rstrip("/").endswith("/" + full) and project.repo_url.startswith("http"):
                raise RepoGone(
                    f"The project's repository {full} is gone from GitHub (deleted by hand?). The factory "
                    "does not recreate it: restore it on GitHub, or start a new project.",
                )
            remote = self._create(client, project)
        if not self._ours(remote, project):
            raise RepoTaken(
                f"A repository named {full} already exists on GitHub and is not this project's. "
                f"The person is asked for another name for the project (e.g. '{project.slug}-2').",
                output={"repository": full},
            )
        services.project_set_repo(project_id=project.id, repo_url=remote.html_url)
        mirror = ensure_bare_repo(project.slug)
        repo = Repo(mirror=mirror, url=remote.html_url, host=self.name, full_name=full)
        self._fetch_main(repo)
        return repo

    def _get(self, client, full: str):
        try:
            with gh.errors(f"looking up the repository {full}"):
                return client.get_repo(full)
        except gh.GitHubNotFound:
            return None

    def _create(self, client, project: Project):
        full = self.full_name(project)
        try:
            with gh.errors(f"creating the repository {full}"):
                org = client.get_organization(self.org)
                created = org.create_repo(
                    project.slug,
                    description=marker_description(project),
                    private=True,
                    auto_init=False,
                    allow_squash_merge=True,
                )
        except gh.GitHubUnprocessable:  # it exists after all (a race, or not visible to us before)
            created = self._get(client, full)
            if created is None:
                raise
        log.info("github_repo_created", repository=full)
        return created

    def _ours(self, remote, project: Project) -> bool:
        try:
            with gh.errors(f"reading {MARKER_PATH} of {remote.full_name}"):
                content = remote.get_contents(MARKER_PATH)
                found = json.loads(content.decoded_content)
        except gh.GitHubNotFound:  # no marker: ours only if it is the empty repository we created
            with gh.errors(f"listing the branches of {remote.full_name}"):
                empty = not list(remote.get_git_matching_refs("heads/"))
            return empty and remote.description == marker_description(project)
        except ValueError:
            return False
        wanted = marker(project)
        return isinstance(found, dict) and all(found.get(k) == wanted[k] for k in ("factory", "project_id"))

    # --- git over smart HTTP --------------------------------------------------------------
    def _remote(self, repo: Repo) -> str:
        return f"{gh.git_base_url()}/{repo.full_name}.git"

    def _git(self, *args: str, repo: Repo, doing: str, check: bool = True) -> subprocess.CompletedProcess:
        try:
            proc = git(*args, cwd=repo.mirror, check=False, env=gh.git_auth_env())
        except subprocess.TimeoutExpired:
            raise TransientError(f"git timed out while {doing}.", code="github_unavailable") from None
        if proc.returncode != 0 and check:
            detail = proc.stderr.strip()[-300:]
            if any(t in detail.lower() for t in _TRANSIENT_GIT):
                raise TransientError(f"GitHub's git failed while {doing}: {detail}", code="github_unavailable")
            raise PermanentError(f"git failed while {doing}: {detail}", code="git_failed")
        return proc

    def _fetch_main(self, repo: Repo) -> str | None:
        proc = self._git(
            "fetch",
            "--quiet",
            self._remote(repo),
            "+refs/heads/main:refs/heads/main",
            repo=repo,
            doing="fetching main",
            check=False,
        )
        if proc.returncode != 0:
            if "couldn't find remote ref" in proc.stderr.lower():
                return None  # an empty repository: the first run pushes main
            self._git("fetch", "--quiet", self._remote(repo), "main", repo=repo, doing="fetching main")
        return branch_sha(repo.mirror, "main")

    def base_commit(self, project: Project, repo: Repo, kind: str = PipelineRun.Kind.CREATE) -> str:
        """``main`` (a change starts from it), fetched from GitHub in ``prepare``; a redeploy
        rebuilds the live commit itself."""
        if kind == PipelineRun.Kind.REDEPLOY:
            live = (
                Deployment.objects.filter(project_id=project.id, status=Deployment.Status.LIVE)
                .values_list("commit_sha", flat=True)
                .first()
            )
            if live:
                return live
        return branch_sha(repo.mirror, "main") or ""

    def scaffold_files(self, project: Project, kind: str) -> dict[str, str]:
        files = {MARKER_PATH: json.dumps(marker(project), indent=2) + "\n"}
        if settings.GITHUB_CI_WORKFLOW:
            files[WORKFLOW_PATH] = workflow(kind)
        return files

    def publish(self, project: Project, repo: Repo, *, branch: str, sha: str) -> None:
        """Push ``sha`` from the mirror to GitHub's ``branch`` (the factory owns ``run-<id>``:
        forced). A repository without ``main`` gets the scaffold as its ``main`` first."""
        if branch != "main" and not branch_sha(repo.mirror, "main"):
            self._push(repo, sha, "main", force=False)
            git("update-ref", "refs/heads/main", sha, cwd=repo.mirror)
        self._push(repo, sha, branch, force=branch != "main")

    def _push(self, repo: Repo, sha: str, branch: str, *, force: bool) -> None:
        self._git(
            "push",
            "--quiet",
            "--force" if force else "--no-force",
            self._remote(repo),
            f"{sha}:refs/heads/{branch}",
            repo=repo,
            doing=f"pushing {branch}",
        )
        log.info("github_pushed", repository=repo.full_name, branch=branch, commit=sha)

    # --- pull requests, statuses, checks ------------------------------------------------------
    def _open_pull(self, remote, branch: str):
        with gh.errors(f"listing the pull requests of {branch}"):
            for pull in remote.get_pulls(state="open", head=f"{self.org}:{branch}"):
                return pull
        return None

    def propose(self, project: Project, repo: Repo, *, branch: str, title: str, body: str) -> PullRequest | None:
        client = gh.client()
        with gh.errors(f"reading the repository {repo.full_name}"):
            remote = client.get_repo(repo.full_name)
        pull = self._open_pull(remote, branch)
        if pull is None:
            try:
                with gh.errors(f"opening the pull request of {branch}"):
                    pull = remote.create_pull(base="main", head=branch, title=title, body=body)
            except gh.GitHubUnprocessable as exc:
                if "no commits between" in exc.message.lower():
                    return None  # nothing changed (a redeploy): nothing to review
                pull = self._open_pull(remote, branch)  # opened meanwhile by another attempt
                if pull is None:
                    raise
        services.project_set_code_state(
            project_id=project.id, pull_request_number=pull.number, pull_request_url=pull.html_url
        )
        return PullRequest(number=pull.number, url=pull.html_url)

    def report_tests(self, project: Project, repo: Repo, *, branch: str, sha: str, ok: bool, summary: str) -> None:
        client = gh.client()
        with gh.errors(f"reporting the tests of {sha[:12]}"):
            remote = client.get_repo(repo.full_name)
            commit = remote.get_commit(sha)
            state, description = ("success" if ok else "failure"), summary[:140]
            # A retried report (the stage ran again after a fault) does not add a second status.
            latest = next((s for s in commit.get_statuses() if s.context == STATUS_CONTEXT), None)
            if latest is None or (latest.state, latest.description) != (state, description):
                commit.create_status(state, description=description, context=STATUS_CONTEXT)
        pull = self._open_pull(remote, branch)
        if pull is not None:
            tag = f"<!-- factory:tests:{sha} -->"
            with gh.errors("commenting on the pull request"):
                if not any(tag in (c.body or "") for c in pull.get_issue_comments()):
                    verdict = "passed" if ok else "failed"
                    pull.create_issue_comment(f"{tag}\n**Factory tests {verdict}** for `{sha[:12]}`\n\n{summary}")
        services.project_set_code_state(
            project_id=project.id, ci_status="success" if ok else "failure", ci_updated_at=timezone.now()
        )

    def has_workflows(self, repo: Repo, sha: str) -> bool:
        proc = git("ls-tree", "--name-only", f"{sha}:.github/workflows", cwd=repo.mirror, check=False)
        return proc.returncode == 0 and any(n.endswith((".yml", ".yaml")) for n in proc.stdout.split())

    def checks(self, project: Project, repo: Repo, *, sha: str, polls: int = 0) -> Checks:
        """The check runs of exactly ``sha`` (never "the latest"): none if the commit has no
        workflow; pending until every run completed; failure with the failed runs' excerpts."""
        if not self.has_workflows(repo, sha):
            return Checks("none")
        client = gh.client()
        with gh.errors(f"reading the checks of {sha[:12]}"):
            runs = list(client.get_repo(repo.full_name).get_commit(sha).get_check_runs())
            remaining, _limit = client.rate_limiting
            reset = client.rate_limiting_resettime
        wait = min(settings.GITHUB_CHECKS_MAX_BACKOFF, settings.GITHUB_CHECKS_POLL_SECONDS * 2**polls)
        if 0 <= remaining <= settings.GITHUB_RATE_LIMIT_RESERVE:  # leave the rest for everything else
            wait = max(wait, int(reset - timezone.now().timestamp()) + 1)
        if not runs or any(r.status != "completed" for r in runs):
            self._ci_state(project, "pending")
            return Checks("pending", f"{len(runs)} check run(s) of {sha[:12]}, not all completed", retry_in=wait)
        failed = [r for r in runs if r.conclusion in FAILED]
        if not failed:
            self._ci_state(project, "success")
            return Checks("success", ", ".join(r.name for r in runs))
        parts = []
        for r in failed:
            out = r.output
            text = "\n".join(p for p in (out.title, out.summary, out.text) if p) if out is not None else ""
            parts.append(f"{r.name}: {r.conclusion}\n{text.strip()}")
        self._ci_state(project, "failure")
        return Checks("failure", "\n\n".join(parts)[-EXCERPT:])

    def _ci_state(self, project: Project, state: str) -> None:
        services.project_set_code_state(project_id=project.id, ci_status=state, ci_updated_at=timezone.now())

    def land(self, project: Project, repo: Repo, *, branch: str, sha: str) -> str:
        """Squash-merge the run's pull request at exactly ``sha``, delete its branch, and bring
        ``main`` back into the mirror. Safe to repeat (a merged PR is not merged again)."""
        client = gh.client()
        with gh.errors(f"reading the repository {repo.full_name}"):
            remote = client.get_repo(repo.full_name)
        pull = self._open_pull(remote, branch)
        if pull is not None:
            try:
                with gh.errors(f"merging pull request #{pull.number}"):
                    pull.merge(merge_method="squash", sha=sha, commit_title=f"{pull.title} (#{pull.number})")
            except gh.GitHubError as exc:
                # The release is live already; a person merges by hand (main moved, a protection
                # rule...). The pull request stays open and says so in the project.
                log.warning("github_merge_refused", repository=repo.full_name, pull=pull.number, error=exc.message)
                return branch_sha(repo.mirror, "main") or ""
            log.info("github_merged", repository=repo.full_name, pull=pull.number, commit=sha)
        try:
            with gh.errors(f"deleting the branch {branch}"):
                ref = remote.get_git_ref(f"heads/{branch}")
                ref.ref  # noqa: B018 (completes the lazy object: its own URL comes with it)
                ref.delete()
        except (gh.GitHubNotFound, gh.GitHubUnprocessable):
            pass  # deleted already (a rerun, or GitHub's "delete branch on merge")
        services.project_set_code_state(project_id=project.id, pull_request_number=None, pull_request_url="")
        main = self._fetch_main(repo)
        if main is None:  # nothing to merge (no pull request) and no main yet: the deployed commit is it
            self.publish(project, repo, branch="main", sha=sha)
            git("update-ref", "refs/heads/main", sha, cwd=repo.mirror)
            main = sha
        return main
