"""``orchestrator-cli``: how an agent inside a worker talks to the factory (channel 2).

    orchestrator-cli progress "wrote the handlers, running tests"
    orchestrator-cli ask "Which city should the weather default to?"
    orchestrator-cli result --status complete --commit 1a2b3c4 --summary "greeter done"

Commands are validated (pydantic, the same models the server uses) before anything is sent, and
sent with the worker's short-lived token from the environment (FACTORY_API_URL,
FACTORY_API_TOKEN, FACTORY_RUN_ID). Exit codes: 0 accepted, 1 refused by the factory or
unreachable, 2 bad command or not inside a worker. Needs only the standard library and pydantic.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

from pydantic import BaseModel, ValidationError

from agents.contracts import AgentResult, AskIn, ProgressIn, describe_errors

EXIT_OK, EXIT_REFUSED, EXIT_USAGE = 0, 1, 2


class CliError(Exception):
    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orchestrator-cli", description="Talk to the factory from inside a worker.")
    commands = parser.add_subparsers(dest="command", required=True)
    progress = commands.add_parser("progress", help="tell the person what you are doing")
    progress.add_argument("message")
    ask = commands.add_parser("ask", help="ask a person a question")
    ask.add_argument("question")
    result = commands.add_parser("result", help="report your result (complete, blocked or failed)")
    result.add_argument("--status", required=True)
    result.add_argument("--commit")
    result.add_argument("--summary", default="")
    result.add_argument("--question")
    return parser


def build(args: argparse.Namespace) -> tuple[str, BaseModel]:
    """The endpoint and the validated body for a parsed command."""
    if args.command == "progress":
        return "progress", ProgressIn(message=args.message)
    if args.command == "ask":
        return "ask", AskIn(question=args.question)
    return "result", AgentResult(status=args.status, commit=args.commit, summary=args.summary, question=args.question)


def send(endpoint: str, body: BaseModel, env: dict[str, str]) -> dict:
    missing = [k for k in ("FACTORY_API_URL", "FACTORY_API_TOKEN", "FACTORY_RUN_ID") if not env.get(k)]
    if missing:
        raise CliError(f"not inside a worker: {', '.join(missing)} not set", EXIT_USAGE)
    url = f"{env['FACTORY_API_URL'].rstrip('/')}/api/runs/{env['FACTORY_RUN_ID']}/worker/{endpoint}/"
    request = urllib.request.Request(
        url,
        method="POST",
        data=body.model_dump_json(exclude_none=True).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Worker {env['FACTORY_API_TOKEN']}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read())["error"]
            detail = f"{error['code']}: {error['message']}"
        except (ValueError, KeyError, TypeError):
            detail = f"HTTP {exc.code}"
        raise CliError(f"the factory refused: {detail}", EXIT_REFUSED) from None
    except (urllib.error.URLError, OSError) as exc:
        raise CliError(f"cannot reach the factory at {env['FACTORY_API_URL']}: {exc}", EXIT_REFUSED) from None


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        endpoint, body = build(args)
    except ValidationError as exc:
        print(f"orchestrator-cli: invalid {args.command}: {describe_errors(exc)}", file=sys.stderr)
        return EXIT_USAGE
    try:
        send(endpoint, body, dict(os.environ) if env is None else env)
    except CliError as exc:
        print(f"orchestrator-cli: {exc}", file=sys.stderr)
        return exc.code
    print(f"orchestrator-cli: {args.command} accepted")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
