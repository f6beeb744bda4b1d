"""Scripted agents: a deterministic Architect (catalogue.py) and Developer (agent.py), no LLM.

Import the submodules directly: agent.py is stdlib-only and runs inside an isolated worker,
catalogue.py needs pydantic and projects.specs.
"""
