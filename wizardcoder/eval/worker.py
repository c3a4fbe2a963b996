"""Entry point of a sandbox worker process: `python -m wizardcoder.eval.worker INDEX CONFIG_JSON [UID]`.

Started by `wizardcoder.eval.pool.SandboxPool` as a fresh interpreter (never forked from the evaluator, so it holds
none of the evaluator's state); it then forks one isolated child per program (see sandbox.py). The pool starts it
with `python -S` and its import path in PATH_VARIABLE: site's work (the .pth files, an editable install's import
hook) is done once, by the evaluator, rather than once per worker."""
import json
import os
import sys

PATH_VARIABLE = "WIZARDCODER_WORKER_PATH"

if __name__ == "__main__":
    if PATH_VARIABLE in os.environ:
        sys.path[:] = json.loads(os.environ.pop(PATH_VARIABLE))
        import builtins

        if not hasattr(builtins, "exit"):  # what site adds that a program may call: exit() and quit()
            import _sitebuiltins

            builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
            builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    from .sandbox import SandboxConfig, serve

    serve(int(sys.argv[1]), SandboxConfig(**json.loads(sys.argv[2])), int(sys.argv[3]) if len(sys.argv) > 3 else None)
    os._exit(0)  # nothing left to flush (replies go straight to the pipe): skip tearing down every module
