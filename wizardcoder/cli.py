"""`wizardcoder <verb>`: one program, one verb per pipeline stage.

Each verb lives in its own module, which defines `Config` (a dataclass: its settings, see wizardcoder.settings) and
`run(cfg) -> int`. Modules are imported only when their verb runs, so `wizardcoder evaluate` never pays for importing
torch's model code.

Every verb with a config section takes `--config FILE`: a TOML or JSON file with one section per verb (`[evolve]`,
`[pack]`, `[train]`, `[generate]`, `[evaluate]`, `[serve]`, and `[run]` for `wizardcoder run`) whose keys are the
Config's field names (`--max-new-tokens` -> `max_new_tokens`). The section gives the defaults, a flag on the command
line overrides them, and the Config is built and checked once (`parse_verb`). `wizardcoder run` builds each stage's
Config from its resolved section (`settings.build`) and calls the same `run(cfg)`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Any

from . import settings
from .errors import ConfigError, UserError
from .interrupts import handled, stopping
from .io import read_json

# verb -> (module, one-line help). A verb appears once its module exists.
VERBS: dict[str, tuple[str, str]] = {
    "evolve": ("wizardcoder.evol.cli", "evolve seed instructions with an LLM (Evol-Instruct for code)"),
    "pack": ("wizardcoder.data.cli", "tokenize instruction data and pack it into token-stream shards"),
    "train": ("wizardcoder.train", "fine-tune StarCoder or a Llama-family model on packed shards (one process; torchrun for many)"),
    "generate": ("wizardcoder.generate", "sample completions for a benchmark's prompts"),
    "evaluate": ("wizardcoder.eval.cli", "score samples (or generate, then score) with pass@k"),
    "serve": ("wizardcoder.serve", "OpenAI-compatible HTTP server over a checkpoint"),
    "run": ("wizardcoder.pipeline.run", "run evolve, pack, train, generate, evaluate in order from one config file"),
    "plan": ("wizardcoder.plan", "predict per-GPU memory of a training run"),
    "bench": ("bench.run_all", "run the benchmarks and print a table"),
    "demo": ("wizardcoder.demo", "the whole pipeline (evolve, pack, train, generate, evaluate) on a CPU in minutes"),
    "info": ("wizardcoder.info", "describe a checkpoint or preset: shapes, parameters, FLOPs per token"),
}

# Sections a config file may hold: one per verb that reads one, plus `run`'s own options.
CONFIG_SECTIONS = ("run", "evolve", "pack", "train", "generate", "evaluate", "serve")


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def verb_available(verb: str) -> bool:
    return verb in VERBS and _available(VERBS[verb][0])


def verb_module(verb: str):
    """The verb's module (its `Config` and `run(cfg)`), imported only now."""
    if not verb_available(verb):
        raise UserError(f"the `{verb}` verb is not available in this installation ({VERBS[verb][0]} is missing).")
    return importlib.import_module(VERBS[verb][0])


def verb_config(verb: str) -> type:
    """The verb's one Config dataclass."""
    return verb_module(verb).Config


# ------------------------------------------------------------------------------------------------------ config file


def load_config(path: str) -> dict[str, dict]:
    """Read a TOML (`.toml`) or JSON file into {section: {key: value}}; check the section names (not the keys)."""
    if os.path.isdir(path):
        raise ConfigError(f"--config {path} is a folder; give the config file itself (TOML or JSON).")
    if not os.path.isfile(path):
        raise ConfigError(f"--config {path}: no such file.")
    if path.endswith(".toml"):
        import tomllib

        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{path}: not valid TOML ({e}).") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not a UTF-8 text file; a config is TOML (.toml) or JSON.") from None
    else:
        data = read_json(path, "--config file", ConfigError, "a config is TOML (.toml) or JSON")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of sections ({', '.join(CONFIG_SECTIONS)}).")
    for name, section in data.items():
        if name not in CONFIG_SECTIONS:
            raise ConfigError(f"{path}: unknown section [{name}]; valid sections are {', '.join(CONFIG_SECTIONS)}.")
        if not isinstance(section, dict):
            raise ConfigError(f"{path}: [{name}] must be a table of key = value, got {type(section).__name__}.")
    return data


def parse_verb(verb: str, argv: list[str], section: dict | None = None, where: str = "") -> tuple[Any, Any]:
    """(module, cfg): the verb's Config from a config section (defaults) and `argv` (overrides), built and checked
    once (settings.parse): the one path from a command line and a config file to a verb."""
    module = verb_module(verb)
    cfg = settings.parse(module.Config, argv, section, where or f"[{verb}]", prog=f"wizardcoder {verb}",
                         description=VERBS[verb][1])
    return module, cfg


def _split_config_flag(argv: list[str]) -> tuple[str | None, list[str]]:
    """Pull `--config FILE` / `--config=FILE` out of argv."""
    rest, path, it = [], None, iter(argv)
    for a in it:
        if a == "--config":
            path = next(it, None)
            if path is None:
                raise ConfigError("--config needs a file name.")
        elif a.startswith("--config="):
            path = a.split("=", 1)[1]
        else:
            rest.append(a)
    return path, rest


def _parse(argv: list[str]) -> tuple[Any, Any]:
    if not argv or argv[0] not in VERBS or not verb_available(argv[0]):
        build_parser().parse_args(argv)  # help, or an unknown verb: argparse's own message and exit
        raise UserError(f"unknown verb {argv[0]!r}.")  # not reached
    verb = argv[0]
    if verb not in CONFIG_SECTIONS or verb == "run":
        return parse_verb(verb, argv[1:])  # no config section of its own (or, run, it reads the file itself)
    path, rest = _split_config_flag(argv[1:])
    section = load_config(path).get(verb, {}) if path else None
    if "-h" in rest or "--help" in rest:  # help lists --config too
        parser = settings.parser_for(verb_config(verb), f"wizardcoder {verb}", VERBS[verb][1])
        parser.add_argument("--config", metavar="FILE",
                            help=f"TOML or JSON file whose [{verb}] section sets defaults for these flags")
        parser.parse_args(rest)
    return parse_verb(verb, rest, section, f"{path} [{verb}]" if path else "")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wizardcoder", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb, (module, help_) in VERBS.items():
        if _available(module):
            sub.add_parser(verb, help=help_, description=help_, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    with handled():  # Ctrl-C: the first stops the verb, any more are ignored
        try:
            module, cfg = _parse(argv)
            return int(module.run(cfg) or 0)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as e:  # a verb may say what stopped and how to resume (`run` does)
            stopping()  # first: the exit is then by status 130, not by the signal
            print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
