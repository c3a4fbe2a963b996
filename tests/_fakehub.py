"""A Hugging Face hub on 127.0.0.1 for tests: the requests huggingface_hub's snapshot_download, hf_hub_download and
repo_info make, answered from local folders, with every request recorded.

    with FakeHub({"org/tiny": "/path/to/folder"}) as hub:
        env = {**os.environ, **hub.env(tmp_path / "hf")}   # HF_ENDPOINT, HF_HOME, ...: run the client in a subprocess
        ...
        hub.served                                          # [("GET", "/org/tiny/resolve/<sha>/config.json"), ...]

Each repository has one commit (`FakeHub.commit(repo_id)`), reachable as `main` or by its hash. Endpoints:
`GET /api/models/{repo}[/revision/{rev}]` (id, sha, siblings), `GET /api/models/{repo}/tree/{rev}` (the recursive
listing, one page), `HEAD|GET /{repo}/resolve/{rev}/{file}` (X-Repo-Commit, ETag, Content-Length; no X-Xet-Hash, so
the client takes the plain HTTP path). Unknown repositories, revisions and files get the hub's 404 with its
X-Error-Code (RepoNotFound, RevisionNotFound, EntryNotFound). Setting `status` answers every request with it
(503: the hub down; 401: every repository private, which the hub answers with X-Error-Code RepoNotFound to a
client without a token); `stop()` closes the port (no network).

huggingface_hub reads HF_ENDPOINT when it is imported, hence `env()` for a subprocess rather than a patched os.environ.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit


class FakeHub:
    def __init__(self, repos: dict[str, str]):
        self.repos = {repo: _files(folder) for repo, folder in repos.items()}
        self.served: list[tuple[str, str]] = []
        self.status: int | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @staticmethod
    def commit(repo_id: str) -> str:
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def env(self, hf_home) -> dict[str, str]:
        """Environment for a client process: this hub, a fresh HF_HOME, no token, no xet, online."""
        return {"HF_ENDPOINT": self.url, "HF_HOME": str(hf_home), "HF_HUB_CACHE": os.path.join(hf_home, "hub"),
                "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
                "HF_HUB_OFFLINE": "0", "HF_TOKEN": "", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}

    def downloads(self, repo_id: str) -> list[str]:
        """The files of `repo_id` whose content was sent (GET .../resolve/...), sorted."""
        prefix = f"/{repo_id}/resolve/"
        return sorted(p[len(prefix):].split("/", 1)[1] for m, p in self.served if m == "GET" and p.startswith(prefix))

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Close the listening socket: later requests are refused, as with no network."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def _files(folder: str) -> dict[str, str]:
    """Repository path -> local file, for every file under `folder`."""
    out = {}
    for root, _, names in os.walk(folder):
        for name in names:
            full = os.path.join(root, name)
            out[os.path.relpath(full, folder).replace(os.sep, "/")] = full
    return dict(sorted(out.items()))


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_HEAD(self):
            self._serve(body=False)

        def do_GET(self):
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.served.append((self.command, path))
            if hub.status:
                return self._error(hub.status, "RepoNotFound" if hub.status == 401 else "", "Refused")
            api = path.startswith("/api/models/")
            rest = path[len("/api/models/"):] if api else path[1:]
            repo = next((r for r in hub.repos if rest == r or rest.startswith(r + "/")), None)
            if repo is None:
                return self._error(404, "RepoNotFound", "Repository not found")
            files, sha, rest = hub.repos[repo], hub.commit(repo), rest[len(repo) + 1:]
            kind, _, rest = rest.partition("/")
            rev, _, name = rest.partition("/")
            if kind and rev not in ("main", sha):
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            if api and kind in ("", "revision"):
                return self._json({"id": repo, "sha": sha, "private": False,
                                   "siblings": [{"rfilename": f} for f in files]})
            if api and kind == "tree":
                return self._json([{"type": "file", "path": f, "size": os.path.getsize(p), "oid": _sha1(p)}
                                   for f, p in files.items()])
            if not api and kind == "resolve":
                if name not in files:
                    return self._error(404, "EntryNotFound", f"{name} does not exist on {rev}")
                with open(files[name], "rb") as f:
                    data = f.read()
                return self._send(200, data if body else b"", {
                    "Content-Length": str(len(data)), "Content-Type": "application/octet-stream",
                    "X-Repo-Commit": sha, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'})
            self._error(404, "", "Not found")

        def _json(self, obj) -> None:
            data = json.dumps(obj).encode()
            self._send(200, data, {"Content-Type": "application/json", "Content-Length": str(len(data))})

        def _error(self, status: int, code: str, message: str) -> None:
            data = json.dumps({"error": message}).encode()
            headers = {"Content-Type": "application/json", "Content-Length": str(len(data)), "X-Error-Message": message}
            if code:
                headers["X-Error-Code"] = code
            self._send(status, data if self.command != "HEAD" else b"", headers)

        def _send(self, status: int, data: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            if data:
                self.wfile.write(data)

    return Handler


def _sha1(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha1(f.read()).hexdigest()
