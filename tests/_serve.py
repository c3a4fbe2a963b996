"""Helpers for tests that talk to a real `wizardcoder serve` subprocess on 127.0.0.1 (test_serve*.py,
test_evol_server.py, bench/bench_serve.py)."""
import json
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager

from _util import PYTHON, REPO, free_port, repo_env


def save_tiny_checkpoint(folder: str, **overrides) -> str:
    """A random tiny StarCoder with the bundled tokenizer saved beside it: what `serve --model FOLDER` loads."""
    from wizardcoder import StarCoder, Tokenizer

    tok = Tokenizer.bundled()
    overrides.setdefault("vocab_size", tok.vocab_size)
    StarCoder.from_preset("tiny", seed=0, **overrides).save_pretrained(folder)
    tok.save(folder)
    return folder


def vm_kib(pid: int, field: str) -> int:
    """A /proc/PID/status field in KiB (VmRSS: resident now, VmHWM: the peak)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


@contextmanager
def serve(*args: str, env: dict | None = None, startup_s: float = 120):
    """Start `wizardcoder serve ARGS --port P`, wait for /health, yield (base_url, process); stop it after."""
    port = free_port()
    proc = subprocess.Popen([PYTHON, "-m", "wizardcoder", "serve", *args, "--host", "127.0.0.1", "--port", str(port)],
                            cwd=REPO, env=repo_env(**(env or {})), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + startup_s
    try:
        while True:
            try:
                urllib.request.urlopen(base + "/health", timeout=2).read()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if proc.poll() is not None or time.time() > deadline:
                    proc.kill()
                    raise RuntimeError(f"wizardcoder serve did not come up: {proc.communicate()[0][-3000:]}")
                time.sleep(0.2)
        yield base, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def post(base: str, path: str, body, key: str | None = None, timeout: float = 120) -> tuple[int, dict]:
    """POST a JSON body (or raw bytes) and return (status, parsed JSON answer)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    req = urllib.request.Request(base + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())
