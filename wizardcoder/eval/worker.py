"""Entry point of a sandbox worker process: `python -m wizardcoder.eval.worker INDEX CONFIG_JSON [UID]`.

Started by `wizardcoder.eval.pool.SandboxPool` as a fresh interpreter (never forked from the evaluator, so it holds
none of the evaluator's state); it then forks one isolated child per program (see sandbox.py)."""
import json
import os
import sys

from .sandbox import SandboxConfig, serve

if __name__ == "__main__":
    serve(int(sys.argv[1]), SandboxConfig(**json.loads(sys.argv[2])), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    os._exit(0)  # nothing left to flush (replies go straight to the pipe): skip tearing down every module
