"""The local code host (embedded default): the project's code is the mirror itself, a bare
repository in FACTORY_HOME. No pull requests, no checks; a deploy moves ``main`` to the
deployed commit."""

from __future__ import annotations

from pathlib import Path

from orchestrator.codehost.base import Checks, PullRequest, Repo
from orchestrator.git import bare_repo_path, branch_sha, ensure_bare_repo, git
from projects import services
from projects.models import Deployment, Project


class LocalHost:
    name = "local"

    def prepare(self, project: Project) -> Repo:
        repo = self._repo(ensure_bare_repo(project.slug))
        services.project_set_repo(project_id=project.id, repo_url=repo.url)
        return repo

    def repo(self, project: Project) -> Repo:
        return self._repo(bare_repo_path(project.slug))

    def _repo(self, mirror: Path) -> Repo:
        return Repo(mirror=mirror, url=str(mirror), host=self.name)

    def base_commit(self, project: Project, repo: Repo, kind: str = "create") -> str:
        """The live release's commit (after a rollback that is not ``main``), else main's."""
        live = (
            Deployment.objects.filter(project_id=project.id, status=Deployment.Status.LIVE)
            .values_list("commit_sha", flat=True)
            .first()
        )
        return live or branch_sha(repo.mirror, "main") or ""

    def scaffold_files(self, project: Project, kind: str) -> dict[str, str]:
        return {}

    def publish(self, project: Project, repo: Repo, *, branch: str, sha: str) -> None:
        return None  # the mirror is the home: the push into it was the publication

    def propose(self, project: Project, repo: Repo, *, branch: str, title: str, body: str) -> PullRequest | None:
        return None

    def report_tests(self, project: Project, repo: Repo, *, branch: str, sha: str, ok: bool, summary: str) -> None:
        return None

    def checks(self, project: Project, repo: Repo, *, sha: str, polls: int = 0) -> Checks:
        return Checks("none")

    def land(self, project: Project, repo: Repo, *, branch: str, sha: str) -> str:
        git("update-ref", "refs/heads/main", sha, cwd=repo.mirror)
        return sha
