"""templates/telegram_bot renders with copier into a bot whose own offline tests pass."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import copier
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = REPO_ROOT / "templates" / "telegram_bot"


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    target = tmp_path / "bot"
    copier.run_copy(
        str(TEMPLATE),
        str(target),
        defaults=True,
        unsafe=False,
        quiet=True,
        data={"project_name": "Dice Bot", "project_slug": "dice-bot", "summary": "A Telegram bot that rolls dice."},
    )
    return target


def test_the_template_renders_the_runner_handlers_tests_and_start_spec(rendered):
    names = {path.relative_to(rendered).as_posix() for path in rendered.rglob("*") if path.is_file()}
    assert {"app.py", "handlers.py", "factory.json", "pytest.ini", "README.md", "tests/conftest.py"} <= names
    assert json.loads((rendered / "factory.json").read_text()) == {
        "start": ["python", "app.py"],
        "health": "/health",
        "kind": "telegram_bot",
    }
    readme = (rendered / "README.md").read_text()
    assert readme.startswith("# Dice Bot\n") and "A Telegram bot that rolls dice." in readme
    assert "def register(bot" in (rendered / "handlers.py").read_text()


def test_a_rendered_bot_passes_its_own_tests_offline(rendered):
    # As the Tester runs them: the factory's Python, no Django settings, no factory on the path,
    # and an API URL in the environment that must not matter (the tests bring their own Bot API).
    env = {key: value for key, value in os.environ.items() if key not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env["TELEGRAM_API_URL"] = "http://127.0.0.1:9/unreachable/{0}/{1}"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:django"],
        cwd=rendered,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout


def test_an_invalid_slug_is_refused(tmp_path):
    with pytest.raises(ValueError):
        copier.run_copy(
            str(TEMPLATE),
            str(tmp_path / "bad"),
            defaults=True,
            unsafe=False,
            quiet=True,
            data={"project_name": "Bad", "project_slug": "Not A Slug", "summary": ""},
        )
