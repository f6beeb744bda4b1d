"""Where Telegram lives: one package, one TeleBot builder, one place the API URL is set; and the
layering: ``projects`` never imports ``agents``, and nothing in projects, agents or secrets_meta
imports ``orchestrator`` (not even inside a function)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCES = [
    p
    for top in ("agents", "config", "orchestrator", "projects", "secrets_meta")
    for p in (ROOT / top).rglob("*.py")
    if "migrations" not in p.parts
]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_only_the_transport_uses_the_telegram_sdk():
    users = sorted(str(p.relative_to(ROOT)) for p in SOURCES if any(m.split(".")[0] == "telebot" for m in _imports(p)))
    assert users == ["orchestrator/telegram/transport.py"]
    transport = (ROOT / "orchestrator/telegram/transport.py").read_text()
    assert transport.count("telebot.TeleBot(") == 1 and transport.count("apihelper.API_URL =") == 1


def test_domain_apps_import_only_downwards():
    forbidden = {"projects": {"agents", "orchestrator"}, "agents": {"orchestrator"}, "secrets_meta": {"orchestrator"}}
    for path in SOURCES:
        top = path.relative_to(ROOT).parts[0]
        tops = {m.split(".")[0] for m in _imports(path)}
        assert not tops & forbidden.get(top, set()), path.relative_to(ROOT)
