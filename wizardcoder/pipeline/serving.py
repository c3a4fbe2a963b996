"""The `[serve]` section of a run: a `wizardcoder serve` child that evolve talks to, started before each evolve stage
and stopped after it (also when the run dies: the child gets SIGTERM through PR_SET_PDEATHSIG). `attach_server` hands
it to the Run as a hook of the evolve stages; the runner knows nothing of it."""
from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Iterator

from ..cli import verb_config
from ..errors import ConfigError, UserError
from .stages import Run, Stage, command_line, die_with_parent, expand


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


def attach_server(run: Run) -> None:
    """When the config has [serve]: every evolve stage runs with the server up and evolve's llm_base_url/llm_model
    pointing at it; the [serve] settings (less host and port) join the evolve stages' hashes."""
    if "serve" not in run.config:
        return
    if run.config.get("evolve", {}).get("llm_base_url"):
        raise ConfigError(f"{run.source}: [evolve] llm_base_url and a [serve] section both name evolve's LLM; "
                          "keep one.")
    section = {k: expand(v, run.names({}), f"{run.source} [serve] {k}") for k, v in run.config["serve"].items()}
    run.attach("evolve", lambda stage: _server(dict(section), stage, run.state_dir, run.opts.serve_timeout_s),
               {"serve": {k: v for k, v in section.items() if k not in ("host", "port")}})


@contextlib.contextmanager
def _server(section: dict, stage: Stage, state_dir: str, timeout_s: float) -> Iterator[None]:
    """Start `wizardcoder serve` on a free port (unless [serve] port is set), point the stage's llm_base_url and
    llm_model at it, and stop it afterwards, whatever happens in between."""
    host = section.setdefault("host", "127.0.0.1")
    section.setdefault("port", _free_port(host))
    log = os.path.join(state_dir, f"{stage.name.replace('@', '.')}.serve.log")
    cmd = [sys.executable, "-m", "wizardcoder", "serve", *command_line(verb_config("serve"), section)]
    print(f"[run] {stage.name}: starting `wizardcoder serve` ({section.get('model')}) on {host}:{section['port']}; "
          f"log {log}", flush=True)
    with open(log, "ab") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
    try:
        base = f"http://{host}:{section['port']}/v1"
        models = wait_until_serving(base + "/models", proc, log, timeout_s)
        stage.section["llm_base_url"] = base
        stage.section.setdefault("llm_model", models[0] if models else section["model"])
        yield
    finally:
        stop(proc)
        print(f"[run] {stage.name}: server stopped", flush=True)
