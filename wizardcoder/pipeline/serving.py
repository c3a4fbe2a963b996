"""The `[serve]` section of a run: a `wizardcoder serve` child that evolve talks to, started before the evolve stage
and stopped after it (also when the run dies: the child gets SIGTERM through PR_SET_PDEATHSIG)."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import TYPE_CHECKING, Iterator

from ..errors import UserError
from ..io import atomic_write_json

if TYPE_CHECKING:
    from .run import Run, Stage


def die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the parent dies (even by SIGKILL), so no server or rank outlives
    the run. Linux only; elsewhere a no-op."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
        return lines[-1] if lines else "(empty)"
    except OSError:
        return "(no log)"


def wait_until_serving(url: str, proc: subprocess.Popen, log: str, timeout_s: float) -> list[str]:
    """Poll GET url (/v1/models) until it answers 200 and return the model ids it lists; fail if the process exits
    or `timeout_s` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UserError(f"the [serve] server exited with status {proc.returncode} before answering; its last log "
                            f"line ({log}): {_tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return [m.get("id") for m in json.load(r).get("data", [])]
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError, ValueError):
            pass
        time.sleep(0.5)
    raise UserError(f"the [serve] server did not answer {url} within {timeout_s:.0f} s ([run] serve_timeout_s); see "
                    f"{log}.")


def stop(proc: subprocess.Popen, grace_s: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)


@contextlib.contextmanager
def serve_for_evolve(run: "Run", stage: "Stage") -> Iterator[None]:
    """Around the evolve stage when the config has [serve]: start the server on a free port (unless [serve] port
    is set), point evolve's llm_base_url/llm_model at it, stop it afterwards."""
    if stage.verb != "evolve" or "serve" not in run.config:
        yield
        return
    from .run import _expand

    section = {k: _expand(v, run.names({}), f"{run.source} [serve] {k}") for k, v in run.config["serve"].items()}
    host = section.setdefault("host", "127.0.0.1")
    section.setdefault("port", _free_port(host))
    name = stage.name.replace("@", ".")
    cfg, log = os.path.join(run.state_dir, f"{name}.serve.json"), os.path.join(run.state_dir, f"{name}.serve.log")
    atomic_write_json(cfg, {"serve": section})
    cmd = [sys.executable, "-m", "wizardcoder", "serve", "--config", cfg]
    print(f"[run] {stage.name}: starting `wizardcoder serve` ({section.get('model')}) on {host}:{section['port']}; "
          f"log {log}", flush=True)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    try:
        base = f"http://{host}:{section['port']}/v1"
        models = wait_until_serving(base + "/models", proc, log, run.opts.serve_timeout_s)
        stage.section["llm_base_url"] = base
        stage.section.setdefault("llm_model", models[0] if models else section["model"])
        yield
    finally:
        stop(proc)
        print(f"[run] {stage.name}: server stopped", flush=True)

