"""Git on the factory's side (bare remotes, scaffolds, releases), through the real git binary."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from django.conf import settings

from config.errors import PermanentError

_IDENTITY = [
    "-c",
    "user.name=Service Factory",
    "-c",
    "user.email=factory@factory.invalid",
    "-c",
    "init.defaultBranch=main",
    "-c",
    "advice.detachedHead=false",
]


def git(
    *args: str, cwd: Path | str | None = None, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run git with the factory's identity. ``env`` adds to a minimal environment: credentials go
    there (e.g. ``config.github.git_auth_env``), never into ``args`` (a command line is public)."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "GIT_TERMINAL_PROMPT": "0",
        "LANG": "C.UTF-8",
        "HOME": str(settings.FACTORY_HOME),
    }
    proc = subprocess.run(
        ["git", *_IDENTITY, *args], cwd=cwd, env={**base, **(env or {})}, capture_output=True, text=True, timeout=120
    )
    if check and proc.returncode != 0:
        raise PermanentError(f"git {' '.join(args[:2])} failed: {proc.stderr.strip()[-500:]}", code="git_failed")
    return proc


def bare_repo_path(slug: str) -> Path:
    return Path(settings.FACTORY_HOME) / "git" / f"{slug}.git"


def ensure_bare_repo(slug: str) -> Path:
    path = bare_repo_path(slug)
    if not (path / "HEAD").exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        git("init", "--bare", "--initial-branch=main", str(path))
    return path


def branch_sha(repo: Path, branch: str) -> str | None:
    proc = git("rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", cwd=repo, check=False)
    return proc.stdout.strip() or None
