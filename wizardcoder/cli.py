"""`wizardcoder <verb>`: one program, one verb per pipeline stage.

Each verb lives in its own module, which defines `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their verb runs, so `wizardcoder evaluate` never pays for importing torch's model code.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .errors import UserError

# verb -> (module, one-line help). A verb appears once its module exists.
VERBS: dict[str, tuple[str, str]] = {
    "evolve": ("wizardcoder.evol.cli", "evolve seed instructions with an LLM (Evol-Instruct for code)"),
    "pack": ("wizardcoder.data.cli", "tokenize instruction data and pack it into token-stream shards"),
    "train": ("wizardcoder.train", "fine-tune StarCoder on packed shards (one process; torchrun for many)"),
    "generate": ("wizardcoder.generate", "sample completions for a benchmark's prompts"),
    "evaluate": ("wizardcoder.eval.cli", "score samples (or generate, then score) with pass@k"),
    "serve": ("wizardcoder.serve", "OpenAI-compatible HTTP server over a checkpoint"),
    "bench": ("bench.run_all", "run the benchmarks and print a table"),
    "demo": ("wizardcoder.demo", "the whole pipeline on embedded defaults"),
    "info": ("wizardcoder.info", "describe a checkpoint or preset: shapes, parameters, FLOPs per token"),
}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wizardcoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (module, help_) in VERBS.items():
        if not _available(module):
            continue
        p = sub.add_parser(verb, help=help_, description=help_)
        p.set_defaults(_module=module)
        importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # Build only the chosen verb's parser when we can: importing every stage is slow.
    if argv and argv[0] in VERBS and _available(VERBS[argv[0]][0]):
        module = importlib.import_module(VERBS[argv[0]][0])
        parser = argparse.ArgumentParser(prog=f"wizardcoder {argv[0]}", description=VERBS[argv[0]][1])
        module.add_arguments(parser)
        args = parser.parse_args(argv[1:])
    else:
        args = build_parser().parse_args(argv)
        module = importlib.import_module(args._module)
    try:
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
