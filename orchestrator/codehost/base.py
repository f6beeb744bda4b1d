"""The ``CodeHost`` protocol: where a project's code lives, and what the stages ask of it.

Whatever the host, the factory works in a **mirror**: a bare repository in FACTORY_HOME
(``git/<slug>.git``) that workers clone and push to. The ``local`` host is that mirror alone (the
embedded default). The ``github`` host keeps the project's repository on GitHub and the mirror in
step with it: the scaffold and every implementation commit are pushed there by the factory (the
token never enters a worker), a run's branch becomes a pull request, the Tester's report a
comment and a commit status, GitHub's checks gate the deploy, and a deploy merges the PR.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from django.conf import settings

from config import github as github_client
from orchestrator.stages import StageFailed
from projects.models import Project


class RepoTaken(StageFailed):
    """The repository's name is taken by something that is not this project."""

    code = "repo_name_taken"


class RepoGone(StageFailed):
    """The project's repository was deleted by hand; the factory does not recreate it."""

    code = "repo_deleted"


@dataclass(frozen=True)
class Repo:
    mirror: Path  # the bare repository workers clone and push to
    url: str  # what people are shown: the web URL on GitHub, the mirror's path locally
    host: str  # "local" | "github"
    full_name: str = ""  # "<org>/<slug>" on GitHub


@dataclass(frozen=True)
class PullRequest:
    number: int
    url: str


@dataclass(frozen=True)
class Checks:
    """The checks of one commit on the host. ``state``: ``none`` (nothing to wait for),
    ``pending``, ``success`` or ``failure`` (``detail`` then carries the failed checks' names and
    log excerpts). ``retry_in``: when to look again, in seconds (backoff and GitHub's hints)."""

    state: str
    detail: str = ""
    retry_in: int = 0


class CodeHost(Protocol):
    name: str

    def prepare(self, project: Project) -> Repo:
        """The project's repository, created or reused (never someone else's), with the mirror
        holding the host's ``main``."""
        ...

    def repo(self, project: Project) -> Repo:
        """The project's repository as prepared (no call to the host)."""
        ...

    def base_commit(self, project: Project, repo: Repo, kind: str = "create") -> str:
        """The commit a new run of ``kind`` starts from ("" for a first run)."""
        ...

    def scaffold_files(self, project: Project, kind: str) -> dict[str, str]:
        """Files the host adds to a scaffold (path → content)."""
        ...

    def publish(self, project: Project, repo: Repo, *, branch: str, sha: str) -> None:
        """Make the host's ``branch`` point at ``sha`` (a commit in the mirror)."""
        ...

    def propose(self, project: Project, repo: Repo, *, branch: str, title: str, body: str) -> PullRequest | None:
        """Open the run's pull request (or find the one already open); None where there are none."""
        ...

    def report_tests(self, project: Project, repo: Repo, *, branch: str, sha: str, ok: bool, summary: str) -> None:
        """Tell the host what the Tester found for ``sha``."""
        ...

    def checks(self, project: Project, repo: Repo, *, sha: str, polls: int = 0) -> Checks:
        """The host's own checks (CI) of exactly ``sha``."""
        ...

    def land(self, project: Project, repo: Repo, *, branch: str, sha: str) -> str:
        """After ``sha`` went live: make it the project's main line; return the mirror's ``main``."""
        ...


def host_name() -> str:
    """CODE_HOST if set; else ``github`` when GitHub is configured, ``local`` otherwise."""
    name = settings.CODE_HOST or ("github" if github_client.configured() else "local")
    if name not in ("local", "github"):
        raise StageFailed(f"Unknown CODE_HOST {name!r} (local or github).", code="config_inconsistent")
    return name


def get_host(name: str | None = None) -> CodeHost:
    name = name or host_name()
    if name == "github":
        from orchestrator.codehost.github import GitHubHost  # the SDK is imported only when chosen

        return GitHubHost()
    from orchestrator.codehost.local import LocalHost

    return LocalHost()
