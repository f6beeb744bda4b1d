"""The OpenAI-compatible backend: a chat-completions tool loop whose tools run inside the worker.

Any endpoint that speaks ``POST {LLM_BASE_URL}/chat/completions`` with function tools works
(OpenAI, OpenRouter, a local vLLM or Ollama). The model gets four tools: ``run_shell``,
``read_file``, ``write_file`` (confined to the working copy) and ``report_result``, whose
arguments are the AgentResult. The HTTP call is made here, in the orchestrator; every tool call
executes in the worker through the WorkerExec callable. ``AgentConfig.options``:
``max_turns`` (30), ``input_per_mtok`` / ``cached_input_per_mtok`` / ``output_per_mtok`` (USD per
million tokens, 0), ``request_timeout`` (seconds, 120), ``temperature`` (unset).
"""

from __future__ import annotations

import base64
import http.client
import inspect
import json
import posixpath
import re
import time
import urllib.error
import urllib.request
from decimal import Decimal
from typing import Any

from django.conf import settings
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from agents.backends.base import (
    AgentTurn,
    ArchitectResult,
    DevelopTask,
    TurnUsage,
    WorkerExec,
    develop_prompt,
    redact_turn,
)
from agents.contracts import AgentResult
from agents.models import AgentConfig
from config.errors import PermanentError, TransientError
from projects.specs import ProjectSpec

DEFAULT_MAX_TURNS = 30
MAX_TOOL_OUTPUT = 16_000  # characters of a tool's output the model sees
MAX_READ_BYTES = 200_000
MAX_WRITE_BYTES = 750_000  # the content travels in environment variables: stay under ARG_MAX
ENV_CHUNK_BYTES = 90_000  # base64 of this stays under the kernel's 128 KiB limit per variable

SYSTEM_PROMPT = (
    "You are a software developer agent working in a git working copy inside an isolated worker. "
    "Use the tools: run_shell runs a shell command in the working copy; read_file and write_file "
    "take paths relative to it. Work step by step, run the tests, commit and push. When you stop, "
    "call report_result exactly once."
)
REPORT_INSTRUCTIONS = (
    "When you stop (done, blocked or failed), call the report_result tool with status "
    '"complete", "blocked" or "failed", the full sha of the commit you pushed, a summary of what '
    "you did and, if blocked, your question."
)
ARCHITECT_PROMPT = (
    "You are the architect of a software factory. Turn the person's description into a project "
    "specification. Answer with one JSON object, and nothing else, that validates against this "
    "JSON schema:\n{schema}\n"
    'Rules: kind is "web_service" for an HTTP service or "telegram_bot" for a Telegram bot; slug is '
    "lowercase letters, digits and dashes; every feature gets a short name and a one-sentence summary; "
    "env lists variable names and where their values come from, never a value of a secret. "
    "A web_service has acceptance checks: HTTP checks of the deployed service (method, path starting "
    'with "/", expect_status, expect_contains), and no conversation checks. A telegram_bot has no '
    "acceptance checks; it has conversation checks instead, each an object "
    '{"name", "send", "expect_contains"}: a person sends the text "send" (e.g. "/hello Ada") and the '
    'bot\'s reply contains "expect_contains" (e.g. "Hello, Ada!"); its env lists TELEGRAM_BOT_TOKEN '
    'with source "bot_token" (the factory gives the bot its token).'
)

TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "run_shell",
            "description": "Run a shell command (sh -c) in the working copy; returns exit code, stdout and stderr.",
            "parameters": {
                "type": "object",
                "properties": {"command": {"type": "string"}},
                "required": ["command"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "read_file",
            "description": "Read a text file of the working copy.",
            "parameters": {
                "type": "object",
                "properties": {"path": {"type": "string", "description": "relative to the working copy"}},
                "required": ["path"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "Create or overwrite a file of the working copy (parent folders are created).",
            "parameters": {
                "type": "object",
                "properties": {
                    "path": {"type": "string", "description": "relative to the working copy"},
                    "content": {"type": "string"},
                },
                "required": ["path", "content"],
                "additionalProperties": False,
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "report_result",
            "description": "Report the outcome when you stop. Call it once, last.",
            "parameters": {
                "type": "object",
                "properties": {
                    "status": {"type": "string", "enum": ["complete", "blocked", "failed"]},
                    "commit": {"type": ["string", "null"], "description": "full sha of the pushed commit"},
                    "summary": {"type": "string"},
                    "question": {"type": ["string", "null"], "description": "what you need, if blocked"},
                },
                "required": ["status", "summary"],
                "additionalProperties": False,
            },
        },
    },
]

# Inside the worker: resolve the path against the working copy (symlinks too) and refuse escapes.
_CONFINE = (
    "import base64,os,sys\n"
    "root=os.path.realpath(os.getcwd())\n"
    "target=os.path.realpath(os.path.join(root,os.environ['FACTORY_TOOL_PATH']))\n"
    "if os.path.commonpath([root,target])!=root:\n"
    " sys.stderr.write('refused: the path is outside the working copy\\n');sys.exit(3)\n"
)
READ_SCRIPT = _CONFINE + (
    "limit=int(os.environ['FACTORY_TOOL_LIMIT'])\n"
    "with open(target,'rb') as f: data=f.read(limit+1)\n"
    "sys.stdout.write(data[:limit].decode('utf-8','replace'))\n"
    "if len(data)>limit: sys.stdout.write('\\n[... truncated at %d bytes]'%limit)\n"
)
WRITE_SCRIPT = _CONFINE + (
    "n=int(os.environ['FACTORY_TOOL_CHUNKS'])\n"
    "data=b''.join(base64.b64decode(os.environ['FACTORY_TOOL_CONTENT_%d'%i]) for i in range(n))\n"
    "os.makedirs(os.path.dirname(target),exist_ok=True)\n"
    "with open(target,'wb') as f: f.write(data)\n"
    "sys.stdout.write('wrote %d bytes to %s\\n'%(len(data),os.path.relpath(target,root)))\n"
)


# --- The wire format, validated at the edge ----------------------------------------------------
class _Function(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    arguments: str | dict = "{}"


class _ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str = ""
    type: str = "function"
    function: _Function


class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str = "assistant"
    content: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(BaseModel):
    model_config = ConfigDict(extra="allow")
    message: _Message
    finish_reason: str | None = None


class _PromptDetails(BaseModel):
    model_config = ConfigDict(extra="allow")
    cached_tokens: int | None = 0


class _Usage(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt_tokens: int = Field(default=0, ge=0)
    completion_tokens: int = Field(default=0, ge=0)
    prompt_tokens_details: _PromptDetails | None = None


class _Completion(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str | None = None
    choices: list[_Choice] = Field(min_length=1)
    usage: _Usage | None = None


class _UsageTotal:
    """Tokens and cost summed over the turns of one develop() or architect() call."""

    def __init__(self, model: str, options: dict):
        self.model = model
        self.uncached = self.cached = self.output = 0
        self.prices = {
            key: Decimal(str(options.get(key, default) or 0))
            for key, default in (
                ("input_per_mtok", 0),
                ("output_per_mtok", 0),
                ("cached_input_per_mtok", options.get("input_per_mtok", 0)),
            )
        }

    def add(self, completion: _Completion) -> None:
        if completion.model:
            self.model = completion.model[:100]
        u = completion.usage
        if u is None:
            return
        cached = (u.prompt_tokens_details.cached_tokens or 0) if u.prompt_tokens_details else 0
        cached = min(max(cached, 0), u.prompt_tokens)
        self.cached += cached
        self.uncached += u.prompt_tokens - cached
        self.output += u.completion_tokens

    def usage(self) -> TurnUsage:
        cost = (
            self.uncached * self.prices["input_per_mtok"]
            + self.cached * self.prices["cached_input_per_mtok"]
            + self.output * self.prices["output_per_mtok"]
        ) / Decimal(1_000_000)
        # Input tokens exclude cache reads, as Claude Code counts them: the four counts add up.
        return TurnUsage(
            model=self.model,
            input_tokens=self.uncached,
            output_tokens=self.output,
            cache_read_tokens=self.cached,
            cost_usd=cost.quantize(Decimal("0.000001")),
        )


class OpenAICompatibleBackend:
    name = "openai_compatible"

    def __init__(self, config: AgentConfig):
        self.config = config
        self.options: dict = dict(config.options or {})

    # --- HTTP ---------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.config.model or settings.LLM_MODEL

    def _endpoint(self) -> str:
        base = settings.LLM_BASE_URL.rstrip("/")
        if not base:
            raise PermanentError(
                "The OpenAI-compatible backend needs LLM_BASE_URL (for example "
                "http://127.0.0.1:11434/v1 for a local server).",
                code="agent_not_configured",
            )
        if not self.model:
            raise PermanentError(
                "The OpenAI-compatible backend needs a model: set it on the role's Agent config or in LLM_MODEL.",
                code="agent_not_configured",
            )
        return f"{base}/chat/completions"

    def _complete(self, body: dict[str, Any]) -> _Completion:
        """One chat completion; errors sorted into transient (retry) and permanent (fail)."""
        url = self._endpoint()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if settings.LLM_API_KEY:
            headers["Authorization"] = f"Bearer {settings.LLM_API_KEY}"
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers, method="POST")
        timeout = float(self.options.get("request_timeout", 120))
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (configured URL)
                raw = response.read()
        except urllib.error.HTTPError as exc:
            detail = _error_detail(exc)
            if exc.code in (408, 429) or exc.code >= 500:
                extra = {"status": exc.code}
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after:
                    extra["retry_after"] = retry_after
                raise TransientError(
                    f"The LLM endpoint answered {exc.code}: {detail}", code="llm_unavailable", extra=extra
                ) from exc
            raise PermanentError(
                f"The LLM endpoint refused the request ({exc.code}): {detail}",
                code="llm_refused",
                extra={"status": exc.code},
            ) from exc
        except TimeoutError as exc:
            raise TransientError(
                f"The LLM endpoint did not answer within {timeout:g}s.", code="llm_unavailable"
            ) from exc
        except urllib.error.URLError as exc:
            raise TransientError(f"The LLM endpoint is unreachable: {exc.reason}", code="llm_unavailable") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(f"The LLM endpoint connection failed: {exc}", code="llm_unavailable") from exc
        try:
            return _Completion.model_validate(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise PermanentError("The LLM endpoint's answer is not JSON.", code="llm_bad_response") from exc
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            raise PermanentError(
                f"The LLM endpoint's answer is not a chat completion ({where}: {first['msg']}).",
                code="llm_bad_response",
            ) from exc

    def _body(self, messages: list[dict], **extra: Any) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, **extra}
        if "temperature" in self.options:
            body["temperature"] = self.options["temperature"]
        return body

    # --- Architect ----------------------------------------------------------------------------
    def architect(self, description: str) -> ArchitectResult:
        total = _UsageTotal(self.model, self.options)
        schema = json.dumps(ProjectSpec.model_json_schema())
        messages = [
            {"role": "system", "content": ARCHITECT_PROMPT.replace("{schema}", schema)},
            {"role": "user", "content": description},
        ]
        completion = self._complete(self._body(messages, response_format={"type": "json_object"}))
        total.add(completion)
        usage = total.usage()
        content = (completion.choices[0].message.content or "").strip()
        if content.startswith("```"):  # some models fence JSON even in JSON mode
            content = content.strip("`").removeprefix("json").strip()
        try:
            return ArchitectResult(ProjectSpec.model_validate_json(content), usage)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the answer"
            raise PermanentError(
                f"The architect model's spec is not valid: {where}: {first['msg']}.", code="spec_invalid"
            ) from exc

    # --- Developer ----------------------------------------------------------------------------
    def develop(self, task: DevelopTask, run: WorkerExec) -> AgentTurn:
        max_turns = int(self.options.get("max_turns", DEFAULT_MAX_TURNS))
        deadline = time.monotonic() + self.config.time_limit_seconds
        total = _UsageTotal(self.model, self.options)
        prompt = develop_prompt(
            task, template=self.config.prompt_template, report=REPORT_INSTRUCTIONS, continuing=False
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": prompt},
        ]
        log: list[str] = []
        tools = _Tools(task, run)

        def turn(result: AgentResult | None = None, problem: str = "") -> AgentTurn:
            return redact_turn(
                AgentTurn(result=result, usage=total.usage(), log="\n".join(log)[-4000:], problem=problem)
            )

        for number in range(1, max_turns + 1):
            if time.monotonic() > deadline:
                return turn(
                    problem=f"the agent ran out of time after {number - 1} turns ({self.config.time_limit_seconds}s)"
                )
            completion = self._complete(self._body(messages, tools=TOOLS))
            total.add(completion)
            message = completion.choices[0].message
            messages.append(_assistant_message(message))
            if message.content:
                log.append(f"[{number}] {message.content.strip()[:500]}")
            if not message.tool_calls:
                messages.append(
                    {"role": "user", "content": "Use the tools to continue; when you stop, call report_result."}
                )
                continue
            for call in message.tool_calls:
                name = call.function.name
                args, error = _arguments(call.function.arguments)
                if error:
                    output = error
                elif name == "report_result":
                    try:
                        result = AgentResult.model_validate(args)
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        where = ".".join(str(part) for part in first["loc"]) or "arguments"
                        output = f"error: the report is not valid ({where}: {first['msg']}); call report_result again."
                    else:
                        log.append(f"[{number}] report_result: {result.status}")
                        return turn(result)
                else:
                    output = tools.call(name, args)
                log.append(f"[{number}] {name}: {output[:200]}")
                messages.append({"role": "tool", "tool_call_id": call.id, "content": output})
        return turn(problem=f"the agent hit max turns after {max_turns} turns without calling report_result")


class _Tools:
    """The developer's tools, each executed in the worker, in the working copy."""

    def __init__(self, task: DevelopTask, run: WorkerExec):
        self.task = task
        self.run = run

    def call(self, name: str, args: dict[str, Any]) -> str:
        handler = {"run_shell": self.run_shell, "read_file": self.read_file, "write_file": self.write_file}.get(name)
        if handler is None:
            return f"error: there is no tool {name!r}; use run_shell, read_file, write_file or report_result."
        try:
            inspect.signature(handler).bind(**args)
        except TypeError:
            return f"error: wrong arguments for {name}: {sorted(args)}"
        return handler(**args)

    def run_shell(self, command: str) -> str:
        if not isinstance(command, str) or not command.strip():
            return "error: command must be a non-empty string"
        code, out, err = self.run(["sh", "-c", command], {})
        return _clip(f"exit code {code}\n--- stdout\n{out}\n--- stderr\n{err}")

    def read_file(self, path: str) -> str:
        rel, refusal = self.confine(path)
        if refusal:
            return refusal
        code, out, err = self.run(
            [self.task.python, "-c", READ_SCRIPT], {"FACTORY_TOOL_PATH": rel, "FACTORY_TOOL_LIMIT": str(MAX_READ_BYTES)}
        )
        if code != 0:
            return f"error: cannot read {rel}: {_last_line(err)}"
        return _clip(out)

    def write_file(self, path: str, content: str) -> str:
        rel, refusal = self.confine(path)
        if refusal:
            return refusal
        if not isinstance(content, str):
            return "error: content must be a string"
        data = content.encode("utf-8")
        if len(data) > MAX_WRITE_BYTES:
            return f"error: the content is {len(data)} bytes; write files of at most {MAX_WRITE_BYTES} bytes."
        chunks = [data[i : i + ENV_CHUNK_BYTES] for i in range(0, len(data), ENV_CHUNK_BYTES)] or [b""]
        env = {"FACTORY_TOOL_PATH": rel, "FACTORY_TOOL_CHUNKS": str(len(chunks))}
        env.update({f"FACTORY_TOOL_CONTENT_{i}": base64.b64encode(c).decode("ascii") for i, c in enumerate(chunks)})
        code, out, err = self.run([self.task.python, "-c", WRITE_SCRIPT], env)
        if code != 0:
            return f"error: cannot write {rel}: {_last_line(err)}"
        return out.strip()

    def confine(self, path: Any) -> tuple[str, str]:
        """The path relative to the working copy, or a refusal for the model."""
        if not isinstance(path, str) or not path.strip() or "\x00" in path:
            return "", "error: path must be a non-empty string"
        path = path.strip()
        if posixpath.isabs(path):
            root = self.task.repo_dir.rstrip("/")
            if path != root and not path.startswith(root + "/"):
                return "", f"refused: {path} is outside the working copy; use a path relative to it"
            path = posixpath.relpath(path, root)
        normal = posixpath.normpath(path)
        if normal == ".." or normal.startswith("../"):
            return "", f"refused: {path} is outside the working copy"
        if normal == ".":
            return "", "error: path names the working copy itself, not a file"
        return normal, ""


def _arguments(raw: str | dict) -> tuple[dict[str, Any], str]:
    if isinstance(raw, dict):
        return raw, ""
    try:
        args = json.loads(raw or "{}")
    except json.JSONDecodeError:
        return {}, "error: the tool arguments are not valid JSON; send a JSON object."
    if not isinstance(args, dict):
        return {}, "error: the tool arguments must be a JSON object."
    return args, ""


def _assistant_message(message: _Message) -> dict[str, Any]:
    """The assistant's message as the next request must carry it."""
    out: dict[str, Any] = {"role": "assistant", "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": c.id,
                "type": "function",
                "function": {
                    "name": c.function.name,
                    "arguments": c.function.arguments
                    if isinstance(c.function.arguments, str)
                    else json.dumps(c.function.arguments),
                },
            }
            for c in message.tool_calls
        ]
    return out


def _error_detail(exc: urllib.error.HTTPError) -> str:
    """The endpoint's own words, without anything that looks like a key (some echo it masked)."""
    detail = _raw_error_detail(exc)
    if settings.LLM_API_KEY:
        detail = detail.replace(settings.LLM_API_KEY, "***")
    return _KEYLIKE.sub("***", detail)


_KEYLIKE = re.compile(r"\b(sk|pk|rk|key)-[A-Za-z0-9*_\-]{6,}")


def _raw_error_detail(exc: urllib.error.HTTPError) -> str:
    try:
        body = exc.read().decode("utf-8", "replace")
    except OSError:
        return str(exc.reason or "no detail")
    try:
        data = json.loads(body)
        error = data.get("error") if isinstance(data, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    except json.JSONDecodeError:
        pass
    return body.strip()[:300] or str(exc.reason)


def _clip(text: str) -> str:
    if len(text) <= MAX_TOOL_OUTPUT:
        return text
    half = MAX_TOOL_OUTPUT // 2
    return f"{text[:half]}\n[... {len(text) - MAX_TOOL_OUTPUT} characters left out ...]\n{text[-half:]}"


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no detail"
