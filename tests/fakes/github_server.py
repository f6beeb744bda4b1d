"""A loopback GitHub: the REST v3 endpoints the factory uses, and git over smart HTTP.

PyGithub talks to it unchanged with ``base_url=<server>/api/v3`` (GitHub Enterprise style), and
real ``git`` pushes and clones ``<server>/<org>/<repo>.git`` through ``git http-backend`` (CGI), so
the wire format, the status codes and the error bodies (``{"message", "documentation_url",
"errors"}``) are what the real client libraries see from GitHub.

- Auth: REST with ``Authorization: token|Bearer <token>`` (401 "Bad credentials" otherwise); git
  with Basic ``x-access-token:<token>`` or Bearer (401 with ``WWW-Authenticate``). A GitHub App's
  JWT (RS256, checked against the App's public key) mints installation tokens at
  ``POST /app/installations/<id>/access_tokens``.
- Repositories live as bare repositories under ``root``; contents, refs, pulls (squash merge with
  ``sha``), issue comments, commit statuses, check runs, Actions secrets and their public key
  (sealed boxes opened with the repository's private key, so a test can read what was stored).
- GitHub Actions stand-in: a pushed commit whose tree has ``.github/workflows/*.yml`` gets a
  ``tests`` check run, queued until it was read ``ci_polls`` times, then completed with the next
  of ``ci_conclusions`` (default success; a failure carries ``ci_failure_text`` as its output).
- Webhooks: with ``webhook = (url, secret)``, ``complete_checks(repo, sha, conclusion)`` finishes
  a commit's check runs and delivers ``check_run`` and ``check_suite`` events signed like GitHub
  (``X-Hub-Signature-256``); ``deliver`` sends any event.
- Faults: ``fail(method, path_regex, status, message, headers, times)`` answers the next matching
  requests with that error (a secondary rate limit is 403 + ``Retry-After``). Every response
  carries ``X-RateLimit-*`` headers.
- ``requests`` logs (method, path); ``on_git`` is called while a git request is being served (a
  test looks at the process table then: the client's git is running).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import itertools
import json
import os
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
from nacl.public import PrivateKey, SealedBox

DOCS = "https://docs.github.com/rest"


class Reply(Exception):
    def __init__(self, status: int, body: Any = None, headers: dict[str, str] | None = None):
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


def error(status: int, message: str, errors: list | None = None, headers: dict | None = None) -> Reply:
    body: dict[str, Any] = {"message": message, "documentation_url": DOCS}
    if errors:
        body["errors"] = errors
    return Reply(status, body, headers)


@dataclass
class Fault:
    method: str
    path: re.Pattern
    status: int
    message: str
    headers: dict[str, str]
    times: int


@dataclass
class FakeRepo:
    id: int
    owner: str
    name: str
    description: str
    private: bool
    key: PrivateKey = field(default_factory=PrivateKey.generate)
    key_id: str = field(default_factory=lambda: str(secrets.randbelow(10**12)))
    pulls: dict[int, dict] = field(default_factory=dict)
    comments: dict[int, list[dict]] = field(default_factory=dict)
    statuses: dict[str, list[dict]] = field(default_factory=dict)
    check_runs: dict[str, list[dict]] = field(default_factory=dict)
    secrets: dict[str, dict] = field(default_factory=dict)

    @property
    def full_name(self) -> str:
        return f"{self.owner}/{self.name}"

    def secret_value(self, name: str) -> str:
        """What a workflow would see: the sealed box opened with the repository's private key."""
        sealed = base64.b64decode(self.secrets[name]["encrypted_value"])
        return SealedBox(self.key).decrypt(sealed).decode()


class FakeGitHub:
    def __init__(self, root: Path, *, tokens: tuple[str, ...] = (), orgs: tuple[str, ...] = ("acme",)):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.tokens: set[str] = set(tokens)
        self.orgs = set(orgs)
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_seen: list[str] = []  # the scheme of every authorization (never the token)
        self.faults: list[Fault] = []
        self.ci_conclusions: list[str] = []
        self.ci_polls = 1
        self.ci_failure_text = "tests/test_router.py::test_root FAILED: assert 500 == 200"
        self.app: tuple[str, str] | None = None  # (app id, public key PEM)
        self.installations: set[int] = set()
        self.minted: list[str] = []
        self.token_lifetime = timedelta(hours=1)
        self.on_git = None
        self.remaining = 5000
        self.webhook: tuple[str, str] | None = None  # (url, secret) deliveries are POSTed to
        self.deliveries: list[tuple[str, int]] = []  # (event, status answered)
        self._ids = itertools.count(1000)
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None

    # --- set-up ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v3"

    def add_app(self, app_id: str, public_key_pem: str, installation_id: int) -> None:
        self.app = (str(app_id), public_key_pem)
        self.installations.add(installation_id)

    def complete_checks(self, full_name: str, sha: str, conclusion: str = "success") -> list[tuple[int, dict]]:
        """GitHub Actions finishes the check runs of ``sha`` now; with ``webhook`` set (url,
        secret), each completed check run and then its suite is delivered there as GitHub does
        (``X-GitHub-Event``, ``X-GitHub-Delivery``, ``X-Hub-Signature-256`` over the raw body).
        Returns each delivery's (status, answer)."""
        repo = self.repos[full_name]
        with self._lock:
            runs = repo.check_runs.get(sha, [])
            for run in runs:
                run["status"], run["conclusion"] = "completed", conclusion
        answers = []
        for run in runs:
            public = {k: v for k, v in run.items() if not k.startswith("_")}
            answers.append(self.deliver("check_run", {"action": "completed", "check_run": public}, repo))
        suite = {"id": next(self._ids), "head_sha": sha, "head_branch": None, "status": "completed"}
        suite["conclusion"] = conclusion
        answers.append(self.deliver("check_suite", {"action": "completed", "check_suite": suite}, repo))
        return answers

    def deliver(self, event: str, payload: dict, repo: FakeRepo | None = None, *, secret: str | None = None):
        """One webhook delivery to ``webhook`` (url, secret), signed with ``secret`` when given."""
        if self.webhook is None:
            return (0, {})
        url, key = self.webhook
        if repo is not None:
            payload = {
                **payload,
                "repository": {
                    "id": repo.id,
                    "name": repo.name,
                    "full_name": repo.full_name,
                    "private": repo.private,
                    "owner": {"login": repo.owner, "type": "Organization"},
                },
                "organization": {"login": repo.owner},
                "sender": {"login": "github-actions[bot]", "type": "Bot"},
            }
        body = json.dumps(payload).encode()
        mac = hmac.new((secret or key).encode(), body, hashlib.sha256).hexdigest()
        request = urllib.request.Request(
            url,
            data=body,
            method="POST",
            headers={
                "Content-Type": "application/json",
                "User-Agent": "GitHub-Hookshot/fake",
                "X-GitHub-Event": event,
                "X-GitHub-Delivery": str(uuid.uuid4()),
                "X-GitHub-Hook-ID": "1",
                "X-Hub-Signature-256": f"sha256={mac}",
            },
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer = (response.status, json.loads(response.read() or b"{}"))
        except urllib.error.HTTPError as exc:
            answer = (exc.code, json.loads(exc.read() or b"{}"))
        self.deliveries.append((event, answer[0]))
        return answer

    def fail(self, method: str, path: str, status: int, message: str, *, headers: dict | None = None, times: int = 1):
        self.faults.append(Fault(method, re.compile(path), status, message, headers or {}, times))

    def add_repo(self, full_name: str, *, description: str = "", files: dict[str, str] | None = None) -> FakeRepo:
        """A repository made by someone else (with files on main when given)."""
        owner, name = full_name.split("/")
        repo = self._create(owner, name, description, True)
        if files:
            work = self.root / "_work" / name
            subprocess.run(["git", "init", "-q", "-b", "main", str(work)], check=True)
            for path, text in files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(text)
            env = {**os.environ, "GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x"}
            env["GIT_COMMITTER_EMAIL"] = "x@x"
            subprocess.run(["git", "-C", str(work), "add", "-A"], check=True)
            subprocess.run(["git", "-C", str(work), "commit", "-qm", "init"], check=True, env=env)
            subprocess.run(["git", "-C", str(work), "push", "-q", str(self.bare(repo)), "main"], check=True)
        return repo

    def delete_repo(self, full_name: str) -> None:
        import shutil

        repo = self.repos.pop(full_name)
        shutil.rmtree(self.bare(repo))

    def bare(self, repo: FakeRepo) -> Path:
        return self.root / repo.owner / f"{repo.name}.git"

    def git(self, repo: FakeRepo, *args: str, check: bool = True) -> str:
        proc = subprocess.run(["git", *args], cwd=self.bare(repo), capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise RuntimeError(proc.stderr)
        return proc.stdout.strip()

    def branch(self, full_name: str, name: str) -> str | None:
        return self._ref(self.repos[full_name], name)

    def _ref(self, repo: FakeRepo, branch: str) -> str | None:
        out = self.git(repo, "rev-parse", "--verify", "--quiet", f"refs/heads/{branch}", check=False)
        return out or None

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                fake._handle(self, "GET")

            def do_POST(self) -> None:  # noqa: N802
                fake._handle(self, "POST")

            def do_PUT(self) -> None:  # noqa: N802
                fake._handle(self, "PUT")

            def do_PATCH(self) -> None:  # noqa: N802
                fake._handle(self, "PATCH")

            def do_DELETE(self) -> None:  # noqa: N802
                fake._handle(self, "DELETE")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # --- plumbing ---------------------------------------------------------------------------------
    def _body(self, h: BaseHTTPRequestHandler) -> bytes:
        if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(h.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    h.rfile.readline()
                    break
                chunks.append(h.rfile.read(size))
                h.rfile.readline()
            return b"".join(chunks)
        length = int(h.headers.get("Content-Length") or 0)
        return h.rfile.read(length) if length else b""

    def _send(self, h: BaseHTTPRequestHandler, status: int, body: Any, headers: dict[str, str]) -> None:
        data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        h.send_response(status)
        reset = int(time.time()) + 3600
        base = {
            "X-RateLimit-Limit": "5000",
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(reset),
            "X-RateLimit-Used": str(5000 - self.remaining),
            "X-RateLimit-Resource": "core",
            "X-GitHub-Media-Type": "github.v3; format=json",
        }
        if body is not None and not isinstance(body, bytes):
            base["Content-Type"] = "application/json; charset=utf-8"
        for k, v in {**base, **headers}.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        if data:
            h.wfile.write(data)

    def _token(self, h: BaseHTTPRequestHandler) -> tuple[str, str]:
        auth = h.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        scheme = scheme.lower()
        if scheme == "basic":
            user, _, password = base64.b64decode(value).decode().partition(":")
            return scheme, password
        return scheme, value.strip()

    def _handle(self, h: BaseHTTPRequestHandler, method: str) -> None:
        parts = urlsplit(h.path)
        path, query = unquote(parts.path), parse_qs(parts.query)
        with self._lock:
            self.requests.append((method, path))
        try:
            if path.startswith("/api/v3/"):
                body = self._body(h)
                status, payload, headers = self._rest(h, method, path[len("/api/v3") :], query, body)
                self._send(h, status, payload, headers)
            elif ".git/" in path:
                self._git_http(h, method, path, parts.query)
            else:
                raise error(404, "Not Found")
        except Reply as r:
            self._send(h, r.status, r.body, r.headers)

    # --- REST -------------------------------------------------------------------------------------
    def _rest(self, h, method: str, path: str, query: dict, raw: bytes) -> tuple[int, Any, dict]:
        for fault in self.faults:
            if fault.times > 0 and fault.method == method and fault.path.search(path):
                fault.times -= 1
                raise error(fault.status, fault.message, headers=fault.headers)
        scheme, token = self._token(h)
        data = json.loads(raw) if raw else {}
        m = re.fullmatch(r"/app/installations/(\d+)/access_tokens", path)
        if m and method == "POST":
            return self._mint(scheme, token, int(m.group(1)))
        if scheme not in ("token", "bearer") or token not in self.tokens:
            raise error(401, "Bad credentials")
        with self._lock:
            self.auth_seen.append(scheme)
            self.remaining = max(0, self.remaining - 1)
            return self._route(method, path, query, data)

    def _mint(self, scheme: str, token: str, installation: int) -> tuple[int, Any, dict]:
        if self.app is None or scheme != "bearer":
            raise error(401, "A JSON web token could not be decoded")
        app_id, public_key = self.app
        try:
            claims = jwt.decode(token, public_key, algorithms=["RS256"], options={"verify_iat": False})
        except jwt.PyJWTError as exc:
            raise error(401, f"A JSON web token could not be decoded ({exc})") from None
        if str(claims.get("iss")) != app_id:
            raise error(401, "'Issuer' claim ('iss') must be an Integer")
        if installation not in self.installations:
            raise error(404, "Not Found")
        minted = "ghs_" + secrets.token_hex(18)
        with self._lock:
            self.tokens.add(minted)
            self.minted.append(minted)
        expires = (datetime.now(UTC) + self.token_lifetime).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {"token": minted, "expires_at": expires, "permissions": {}, "repository_selection": "all"}, {}

    def _create(self, owner: str, name: str, description: str, private: bool) -> FakeRepo:
        repo = FakeRepo(id=next(self._ids), owner=owner, name=name, description=description, private=private)
        self.bare(repo).parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(self.bare(repo))], check=True)
        subprocess.run(["git", "config", "http.receivepack", "true"], cwd=self.bare(repo), check=True)
        self.repos[repo.full_name] = repo
        return repo

    def _repo_json(self, repo: FakeRepo) -> dict:
        api = f"{self.api_url}/repos/{repo.full_name}"
        return {
            "id": repo.id,
            "name": repo.name,
            "full_name": repo.full_name,
            "owner": {"login": repo.owner, "type": "Organization", "url": f"{self.api_url}/users/{repo.owner}"},
            "private": repo.private,
            "visibility": "private" if repo.private else "public",
            "description": repo.description,
            "default_branch": "main",
            "url": api,
            "html_url": f"{self.url}/{repo.full_name}",
            "clone_url": f"{self.url}/{repo.full_name}.git",
            "size": 0,
        }

    def _pull_json(self, repo: FakeRepo, pr: dict) -> dict:
        api = f"{self.api_url}/repos/{repo.full_name}"
        head_sha = self._ref(repo, pr["head"]) or pr.get("head_sha", "")
        return {
            "id": pr["number"] + 5000,
            "number": pr["number"],
            "state": pr["state"],
            "title": pr["title"],
            "body": pr["body"],
            "merged": pr["merged"],
            "merge_commit_sha": pr.get("merge_commit_sha"),
            "url": f"{api}/pulls/{pr['number']}",
            "html_url": f"{self.url}/{repo.full_name}/pull/{pr['number']}",
            "issue_url": f"{api}/issues/{pr['number']}",
            "head": {
                "ref": pr["head"],
                "sha": head_sha,
                "label": f"{repo.owner}:{pr['head']}",
                "repo": self._repo_json(repo),
            },
            "base": {
                "ref": pr["base"],
                "sha": self._ref(repo, pr["base"]) or "",
                "label": f"{repo.owner}:main",
                "repo": self._repo_json(repo),
            },
        }

    def _ref_json(self, repo: FakeRepo, branch: str, sha: str) -> dict:
        api = f"{self.api_url}/repos/{repo.full_name}"
        return {
            "ref": f"refs/heads/{branch}",
            "url": f"{api}/git/refs/heads/{branch}",
            "object": {"sha": sha, "type": "commit", "url": f"{api}/git/commits/{sha}"},
        }

    def _route(self, method: str, path: str, query: dict, data: dict) -> tuple[int, Any, dict]:
        if path == "/rate_limit":
            core = {"limit": 5000, "remaining": self.remaining, "reset": int(time.time()) + 3600, "used": 0}
            return 200, {"resources": {"core": core}, "rate": core}, {}
        m = re.fullmatch(r"/orgs/([^/]+)", path)
        if m and method == "GET":
            if m.group(1) not in self.orgs:
                raise error(404, "Not Found")
            return 200, {"login": m.group(1), "url": f"{self.api_url}/orgs/{m.group(1)}", "type": "Organization"}, {}
        m = re.fullmatch(r"/orgs/([^/]+)/repos", path)
        if m and method == "POST":
            org = m.group(1)
            if org not in self.orgs:
                raise error(404, "Not Found")
            name = data.get("name", "")
            if f"{org}/{name}" in self.repos:
                raise error(
                    422,
                    "Repository creation failed.",
                    [
                        {
                            "resource": "Repository",
                            "code": "custom",
                            "field": "name",
                            "message": "name already exists on this account",
                        }
                    ],
                )
            repo = self._create(org, name, data.get("description") or "", bool(data.get("private")))
            return 201, self._repo_json(repo), {}
        m = re.fullmatch(r"/repos/([^/]+/[^/]+)(/.*)?", path)
        if not m:
            raise error(404, "Not Found")
        repo = self.repos.get(m.group(1))
        if repo is None:
            raise error(404, "Not Found")
        return self._repo_route(repo, method, m.group(2) or "", query, data)

    def _repo_route(self, repo: FakeRepo, method: str, rest: str, query: dict, data: dict) -> tuple[int, Any, dict]:
        if rest == "" and method == "GET":
            return 200, self._repo_json(repo), {}
        m = re.fullmatch(r"/contents/(.+)", rest)
        if m and method == "GET":
            ref = (query.get("ref") or ["main"])[0]
            if not self._ref(repo, "main"):
                raise error(404, "This repository is empty.")
            proc = subprocess.run(["git", "show", f"{ref}:{m.group(1)}"], cwd=self.bare(repo), capture_output=True)
            if proc.returncode != 0:
                raise error(404, "Not Found")
            api = f"{self.api_url}/repos/{repo.full_name}"
            return (
                200,
                {
                    "type": "file",
                    "encoding": "base64",
                    "name": m.group(1).rsplit("/", 1)[-1],
                    "path": m.group(1),
                    "content": base64.b64encode(proc.stdout).decode(),
                    "size": len(proc.stdout),
                    "sha": self.git(repo, "rev-parse", f"{ref}:{m.group(1)}"),
                    "url": f"{api}/contents/{m.group(1)}",
                },
                {},
            )
        m = re.fullmatch(r"/git/matching-refs/heads/?(.*)", rest)
        if m and method == "GET":
            out = self.git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/")
            refs = [line.split() for line in out.splitlines() if line]
            return 200, [self._ref_json(repo, b, s) for b, s in refs if b.startswith(m.group(1))], {}
        m = re.fullmatch(r"/git/refs?/heads/(.+)", rest)
        if m:
            sha = self._ref(repo, m.group(1))
            if method == "GET":
                if sha is None:
                    raise error(404, "Not Found")
                return 200, self._ref_json(repo, m.group(1), sha), {}
            if method == "DELETE":
                if sha is None:
                    raise error(422, "Reference does not exist")
                self.git(repo, "update-ref", "-d", f"refs/heads/{m.group(1)}")
                return 204, None, {}
        if rest == "/pulls" and method == "GET":
            state = (query.get("state") or ["open"])[0]
            head = (query.get("head") or [""])[0]
            found = [
                self._pull_json(repo, pr)
                for pr in repo.pulls.values()
                if state in ("all", pr["state"]) and (not head or head == f"{repo.owner}:{pr['head']}")
            ]
            return 200, found, {}
        if rest == "/pulls" and method == "POST":
            return self._open_pull(repo, data)
        m = re.fullmatch(r"/pulls/(\d+)(/merge)?", rest)
        if m:
            pr = repo.pulls.get(int(m.group(1)))
            if pr is None:
                raise error(404, "Not Found")
            if not m.group(2) and method == "GET":
                return 200, self._pull_json(repo, pr), {}
            if m.group(2) and method == "PUT":
                return self._merge(repo, pr, data)
        m = re.fullmatch(r"/issues/(\d+)/comments", rest)
        if m:
            number = int(m.group(1))
            if number not in repo.pulls:
                raise error(404, "Not Found")
            comments = repo.comments.setdefault(number, [])
            if method == "GET":
                return 200, comments, {}
            if method == "POST":
                if not data.get("body"):
                    raise error(
                        422,
                        "Validation Failed",
                        [{"resource": "IssueComment", "code": "missing_field", "field": "body"}],
                    )
                cid = next(self._ids)
                comment = {
                    "id": cid,
                    "body": data["body"],
                    "url": f"{self.api_url}/repos/{repo.full_name}/issues/comments/{cid}",
                    "html_url": f"{self.url}/{repo.full_name}/pull/{number}#issuecomment-{cid}",
                }
                comments.append(comment)
                return 201, comment, {}
        m = re.fullmatch(r"/statuses/([0-9a-f]{40})", rest)
        if m and method == "POST":
            sha = m.group(1)
            if self.git(repo, "cat-file", "-t", sha, check=False) != "commit":
                raise error(422, f"No commit found for SHA: {sha}")
            if data.get("state") not in ("error", "failure", "pending", "success"):
                raise error(422, "Validation Failed", [{"resource": "Status", "code": "custom", "field": "state"}])
            status = {
                "id": next(self._ids),
                "state": data["state"],
                "context": data.get("context", "default"),
                "description": data.get("description"),
                "url": f"{self.api_url}/repos/{repo.full_name}/statuses/{sha}",
            }
            repo.statuses.setdefault(sha, []).append(status)
            return 201, status, {}
        m = re.fullmatch(r"/(?:statuses/([0-9a-f]{40})|commits/([0-9a-f]{40})/statuses)", rest)
        if m and method == "GET":  # newest first, as GitHub lists them
            return 200, list(reversed(repo.statuses.get(m.group(1) or m.group(2), []))), {}
        m = re.fullmatch(r"/commits/([0-9a-f]{4,40})", rest)
        if m and method == "GET":
            sha = self.git(repo, "rev-parse", "--verify", "--quiet", f"{m.group(1)}^{{commit}}", check=False)
            if not sha:
                raise error(422, f"No commit found for SHA: {m.group(1)}")
            api = f"{self.api_url}/repos/{repo.full_name}"
            message = self.git(repo, "log", "-1", "--format=%B", sha)
            return (
                200,
                {
                    "sha": sha,
                    "url": f"{api}/commits/{sha}",
                    "html_url": f"{self.url}/{repo.full_name}/commit/{sha}",
                    "commit": {"message": message, "url": f"{api}/git/commits/{sha}"},
                },
                {},
            )
        m = re.fullmatch(r"/commits/([0-9a-f]{40})/check-runs", rest)
        if m and method == "GET":
            runs = repo.check_runs.get(m.group(1), [])
            for run in runs:
                run["_reads"] += 1
                if run["status"] != "completed" and run["_reads"] > self.ci_polls:
                    conclusion = self.ci_conclusions.pop(0) if self.ci_conclusions else "success"
                    run["status"], run["conclusion"] = "completed", conclusion
                    if conclusion != "success":
                        run["output"] = {
                            "title": "1 failed",
                            "summary": "pytest failed",
                            "text": self.ci_failure_text,
                            "annotations_count": 0,
                        }
            public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in runs]
            return 200, {"total_count": len(public), "check_runs": public}, {}
        if rest == "/actions/secrets/public-key" and method == "GET":
            return 200, {"key_id": repo.key_id, "key": base64.b64encode(bytes(repo.key.public_key)).decode()}, {}
        m = re.fullmatch(r"/actions/secrets/([A-Za-z_][A-Za-z0-9_]*)", rest)
        if m:
            name = m.group(1)
            if method == "PUT":
                if data.get("key_id") != repo.key_id or not data.get("encrypted_value"):
                    raise error(
                        422, "Validation Failed", [{"resource": "Secret", "code": "invalid", "field": "key_id"}]
                    )
                try:
                    SealedBox(repo.key).decrypt(base64.b64decode(data["encrypted_value"]))
                except Exception:  # noqa: BLE001 (any undecryptable box is GitHub's 422)
                    raise error(422, "Bad encrypted value") from None
                created = name not in repo.secrets
                repo.secrets[name] = {"encrypted_value": data["encrypted_value"], "updated_at": time.time()}
                return (201 if created else 204), ({} if created else None), {}
            if method == "DELETE":
                if repo.secrets.pop(name, None) is None:
                    raise error(404, "Not Found")
                return 204, None, {}
        raise error(404, "Not Found")

    def _open_pull(self, repo: FakeRepo, data: dict) -> tuple[int, Any, dict]:
        head, base = data.get("head", ""), data.get("base", "")
        head = head.split(":", 1)[-1]
        head_sha, base_sha = self._ref(repo, head), self._ref(repo, base)
        if head_sha is None or base_sha is None:
            raise error(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "field": "head" if head_sha is None else "base", "code": "invalid"}],
            )
        for pr in repo.pulls.values():
            if pr["state"] == "open" and pr["head"] == head:
                raise error(
                    422,
                    "Validation Failed",
                    [
                        {
                            "resource": "PullRequest",
                            "code": "custom",
                            "message": f"A pull request already exists for {repo.owner}:{head}.",
                        }
                    ],
                )
        ahead = self.git(repo, "rev-list", "--count", f"{base_sha}..{head_sha}")
        if ahead == "0":
            raise error(
                422,
                "Validation Failed",
                [{"resource": "PullRequest", "code": "custom", "message": f"No commits between {base} and {head}"}],
            )
        number = len(repo.pulls) + 1
        repo.pulls[number] = {
            "number": number,
            "head": head,
            "base": base,
            "title": data.get("title", ""),
            "body": data.get("body") or "",
            "state": "open",
            "merged": False,
        }
        return 201, self._pull_json(repo, repo.pulls[number]), {}

    def _merge(self, repo: FakeRepo, pr: dict, data: dict) -> tuple[int, Any, dict]:
        if pr["merged"]:
            raise error(405, "Pull Request is not mergeable")
        head_sha, base_sha = self._ref(repo, pr["head"]), self._ref(repo, pr["base"])
        if data.get("sha") and data["sha"] != head_sha:
            raise error(409, "Head branch was modified. Review and try the merge again.")
        ancestor = subprocess.run(["git", "merge-base", "--is-ancestor", base_sha, head_sha], cwd=self.bare(repo))
        if ancestor.returncode != 0:  # main moved past the branch: GitHub would need a real merge
            raise error(405, "Pull Request is not mergeable")
        if data.get("merge_method", "merge") != "squash":
            raise error(405, "Merge commits are not allowed on this repository.")
        title = data.get("commit_title") or pr["title"]
        env = {
            **os.environ,
            "GIT_AUTHOR_NAME": "GitHub",
            "GIT_AUTHOR_EMAIL": "noreply@github.invalid",
            "GIT_COMMITTER_NAME": "GitHub",
            "GIT_COMMITTER_EMAIL": "noreply@github.invalid",
        }
        squashed = subprocess.run(
            ["git", "commit-tree", f"{head_sha}^{{tree}}", "-p", base_sha, "-m", title],
            cwd=self.bare(repo),
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.strip()
        self.git(repo, "update-ref", f"refs/heads/{pr['base']}", squashed, base_sha)
        pr.update(merged=True, state="closed", merge_commit_sha=squashed, head_sha=head_sha)
        return 200, {"sha": squashed, "merged": True, "message": "Pull Request successfully merged"}, {}

    # --- GitHub Actions stand-in -----------------------------------------------------------------
    def _after_push(self, repo: FakeRepo, before: dict[str, str]) -> None:
        out = self.git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/")
        for line in out.splitlines():
            branch, sha = line.split()
            if before.get(branch) == sha or sha in repo.check_runs:
                continue
            listed = self.git(repo, "ls-tree", "--name-only", f"{sha}:.github/workflows", check=False)
            if any(n.endswith((".yml", ".yaml")) for n in listed.split()):
                rid = next(self._ids)
                repo.check_runs[sha] = [
                    {
                        "id": rid,
                        "name": "tests",
                        "head_sha": sha,
                        "status": "queued",
                        "conclusion": None,
                        "url": f"{self.api_url}/repos/{repo.full_name}/check-runs/{rid}",
                        "html_url": f"{self.url}/{repo.full_name}/runs/{rid}",
                        "output": {"title": None, "summary": None, "text": None, "annotations_count": 0},
                        "_reads": 0,
                    }
                ]

    # --- git over smart HTTP ---------------------------------------------------------------------
    def _git_http(self, h: BaseHTTPRequestHandler, method: str, path: str, query: str) -> None:
        body = self._body(h)
        m = re.fullmatch(r"/([^/]+)/([^/]+?)\.git(/.*)", path)
        repo = self.repos.get(f"{m.group(1)}/{m.group(2)}") if m else None
        scheme, token = self._token(h)
        if scheme not in ("basic", "bearer") or token not in self.tokens:
            raise Reply(401, b"Authentication failed\n", {"WWW-Authenticate": 'Basic realm="GitHub"'})
        with self._lock:
            self.auth_seen.append(f"git-{scheme}")
        if repo is None:
            raise Reply(404, b"Repository not found.\n", {"Content-Type": "text/plain"})
        if self.on_git is not None:
            self.on_git()
        pushing = "git-receive-pack" in path or "service=git-receive-pack" in query
        before = {}
        if pushing and method == "POST":
            out = self.git(repo, "for-each-ref", "--format=%(refname:short) %(objectname)", "refs/heads/")
            before = dict(line.split() for line in out.splitlines() if line)
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "PATH_INFO": path,
            "REQUEST_METHOD": method,
            "QUERY_STRING": query,
            "CONTENT_TYPE": h.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "x-access-token",
            "REMOTE_ADDR": "127.0.0.1",
            "GIT_PROTOCOL": h.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": h.headers.get("Content-Encoding", ""),
        }
        proc = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True, timeout=120)
        head, _, payload = proc.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = proc.stdout.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode(errors="replace").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers[name.strip()] = value.strip()
        if pushing and method == "POST":
            with self._lock:
                self._after_push(repo, before)
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        h.wfile.write(payload)
