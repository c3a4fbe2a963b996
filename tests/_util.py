"""Helpers the tests share (import as `from _util import REPO, free_port, ...`; pytest puts tests/ on sys.path)."""
import os
import socket
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

def _find_shared_data() -> str:
    """$WIZARDCODER_SHARED_DATA, else ../shared/data beside the checkout, else the workspace's /work/shared/data
    (a clone made elsewhere, e.g. by CI); the first candidate when none exists (the tests then skip, or fail in CI)."""
    if os.environ.get("WIZARDCODER_SHARED_DATA"):
        return os.environ["WIZARDCODER_SHARED_DATA"]
    candidates = [os.path.join(REPO, "..", "shared", "data"), "/work/shared/data"]
    return next((c for c in candidates if os.path.isdir(c)), candidates[0])


SHARED_DATA = _find_shared_data()
PYTHON = sys.executable


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def repo_env(**extra: str) -> dict:
    """os.environ with the repo on PYTHONPATH, for subprocesses that run `python -m wizardcoder ...`."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env
