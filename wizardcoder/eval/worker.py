"""Entry point of sandbox worker processes (sandbox.py).

    python -m wizardcoder.eval.worker INDEX CONFIG_JSON [UID]       one worker: a restart, or by hand
    python -m wizardcoder.eval.worker --fork WORKERS                a pool's start: the fork server, WORKERS a JSON
                                                                    list of [index, command fd, reply fd]; the
                                                                    config and uids come later on stdin (launch.py)

Started by `wizardcoder.eval.pool.SandboxPool` as a fresh interpreter (never forked from the evaluator, so it holds
none of the evaluator's state); a worker then forks one isolated child per program. The pool starts it with
`python -S` and its import path in PATH_VARIABLE: site's work (the .pth files, an editable install's import hook) is
done once, by the evaluator, rather than once per process, and `-c` calling `main` rather than `-m` (runpy, with
importlib.util and importlib.machinery, would be ~3 ms of the start and live in every worker). Every module a worker
holds makes each program's fork and exit dearer, so it imports only sandbox.py's own (not jobs.py and its
dataclasses)."""
import json
import os
import sys
import types

PATH_VARIABLE = "WIZARDCODER_WORKER_PATH"


def main() -> None:
    """A worker or the fork server, as sys.argv says (the forms above)."""
    by_pool = PATH_VARIABLE in os.environ
    if by_pool:
        sys.path[:] = json.loads(os.environ.pop(PATH_VARIABLE))
        import builtins

        if not hasattr(builtins, "exit"):  # what site adds that a program may call: exit() and quit()
            import _sitebuiltins

            builtins.exit = _sitebuiltins.Quitter("exit", "Ctrl-D (i.e. EOF)")
            builtins.quit = _sitebuiltins.Quitter("quit", "Ctrl-D (i.e. EOF)")
    from .sandbox import fork_workers, serve

    if sys.argv[1] == "--fork":
        def configure():  # {"config": every field of SandboxConfig, "uids": [...]}; EOF: the pool was closed first
            line = sys.stdin.buffer.readline()
            if not line:
                os._exit(0)
            msg = json.loads(line)
            return types.SimpleNamespace(**msg["config"]), msg["uids"]

        fork_workers(json.loads(sys.argv[2]), configure)
    config = json.loads(sys.argv[2])
    if by_pool:  # every field of SandboxConfig: read as attributes, without importing the dataclass's module (jobs.py)
        config = types.SimpleNamespace(**config)
    else:  # by hand: SandboxConfig's defaults for the fields not given
        from .jobs import SandboxConfig

        config = SandboxConfig(**config)
    serve(int(sys.argv[1]), config, int(sys.argv[3]) if len(sys.argv) > 3 else None)
    os._exit(0)  # nothing left to flush (replies go straight to the pipe): skip tearing down every module


if __name__ == "__main__":
    main()
