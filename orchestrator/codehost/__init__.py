"""Where a project's code lives: the ``CodeHost`` protocol and its two implementations, ``local``
(bare repositories in FACTORY_HOME, the embedded default) and ``github`` (a private repository per
project in GITHUB_ORG, pull requests, commit statuses and check runs), chosen by settings."""

from orchestrator.codehost.base import (
    Checks,
    CodeHost,
    PullRequest,
    Repo,
    RepoGone,
    RepoTaken,
    get_host,
)

__all__ = ["Checks", "CodeHost", "PullRequest", "Repo", "RepoGone", "RepoTaken", "get_host"]
