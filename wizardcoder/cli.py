"""`wizardcoder <verb>`: one program, one verb per pipeline stage.

Each verb lives in its own module, which defines `add_arguments(parser)` and `run(args) -> int`. Modules are
imported only when their verb runs, so `wizardcoder evaluate` never pays for importing torch's model code.

Every verb takes `--config FILE`: a TOML or JSON file with one section per verb (`[evolve]`, `[pack]`, `[train]`,
`[generate]`, `[evaluate]`, `[serve]`, and `[run]` for `wizardcoder run`) whose keys are the verb's argparse `dest`
names (`--max-new-tokens` -> `max_new_tokens`). The verb's own section becomes the parser's defaults before parsing,
so a flag on the command line overrides the file. `wizardcoder run` uses the same path (`parse_verb_args`).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from typing import Any

from .errors import ConfigError, UserError
from .io import read_json

# verb -> (module, one-line help). A verb appears once its module exists.
VERBS: dict[str, tuple[str, str]] = {
    "evolve": ("wizardcoder.evol.cli", "evolve seed instructions with an LLM (Evol-Instruct for code)"),
    "pack": ("wizardcoder.data.cli", "tokenize instruction data and pack it into token-stream shards"),
    "train": ("wizardcoder.train", "fine-tune StarCoder on packed shards (one process; torchrun for many)"),
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
# dests that are never config keys
_NOT_KEYS = {"help", "config", "_module"}


def _available(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


def verb_available(verb: str) -> bool:
    return verb in VERBS and _available(VERBS[verb][0])


class _RaisingParser(argparse.ArgumentParser):
    """A parser whose errors are ConfigErrors naming `where` (a config file and section), not usage + exit."""

    where = ""

    def error(self, message: str):
        raise ConfigError(f"{self.where}: {message}.")


def verb_parser(verb: str, raise_errors: str | None = None) -> tuple[Any, argparse.ArgumentParser]:
    """(module, parser) of one verb, built by the verb's own `add_arguments`. With `raise_errors` (e.g.
    "run.toml [train]") a parse error raises a ConfigError naming it instead of printing usage and exiting."""
    if not verb_available(verb):
        raise UserError(f"the `{verb}` verb is not available in this installation ({VERBS[verb][0]} is missing).")
    module = importlib.import_module(VERBS[verb][0])
    cls = _RaisingParser if raise_errors else argparse.ArgumentParser
    parser = cls(prog=f"wizardcoder {verb}", description=VERBS[verb][1])
    if raise_errors:
        parser.where = raise_errors
    module.add_arguments(parser)
    return module, parser


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


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """dest -> action for every option a config section may set."""
    return {a.dest: a for a in parser._actions if a.dest not in _NOT_KEYS and a.option_strings}


def _convert(action: argparse.Action, value: Any, where: str) -> Any:
    """A config value as the parsed flag would hold it: types converted, choices and bools checked."""
    if value is None:
        return None
    flag = action.option_strings[-1] if action.option_strings else action.dest
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false (it is the flag {flag}), got {value!r}.")
        return value
    many = isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*") or isinstance(action.nargs, int)
    if many:
        items = value if isinstance(value, list) else [value]
        return [_convert_one(action, v, where, flag) for v in items]
    if isinstance(value, (list, dict)):
        raise ConfigError(f"{where}: takes one value (flag {flag}), got {type(value).__name__} {value!r}.")
    return _convert_one(action, value, where, flag)


def _convert_one(action: argparse.Action, value: Any, where: str, flag: str) -> Any:
    tp = action.type
    if tp is not None and callable(tp) and not isinstance(value, bool):
        if tp in (int, float) and not isinstance(value, (int, float, str)):
            raise ConfigError(f"{where}: expected a number (flag {flag}), got {value!r}.")
        if tp is int and isinstance(value, float):
            raise ConfigError(f"{where}: expected an integer (flag {flag}), got {value!r}.")
        try:
            value = tp(value) if isinstance(value, str) or tp in (int, float) else value
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where}: {value!r} is not valid for {flag} ({e}).") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(str, action.choices))} (flag {flag}).")
    return value


def apply_config(parser: argparse.ArgumentParser, section: dict, where: str) -> None:
    """Make `section` the parser's defaults (command-line flags still override). `where` names the file and section
    in errors, e.g. "run.toml [train]". A value given here also satisfies a required flag or a required group."""
    keys = config_keys(parser)
    values = {}
    for key, value in section.items():
        if key not in keys:
            raise ConfigError(f"{where}: unknown field {key!r}; valid fields are {', '.join(sorted(keys))}.")
        action = keys[key]
        values[key] = _convert(action, value, f"{where} {key}")
        action.required = False
    for group in parser._mutually_exclusive_groups:
        if any(a.dest in values for a in group._group_actions):
            group.required = False
    parser.set_defaults(**values)


def parse_verb_args(verb: str, argv: list[str], section: dict | None = None,
                    where: str = "") -> tuple[Any, argparse.Namespace]:
    """Build `verb`'s parser, apply a config section as its defaults, parse `argv`: the one path from config and
    command line to a verb's arguments, shared by the CLI and `wizardcoder run`."""
    where = where or f"[{verb}]"
    module, parser = verb_parser(verb, raise_errors=where)
    if section:
        apply_config(parser, section, where)
    return module, parser.parse_args(argv)


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


def _parse(argv: list[str]) -> tuple[Any, argparse.Namespace]:
    if not argv or argv[0] not in VERBS or not verb_available(argv[0]):
        args = build_parser().parse_args(argv)  # help, or an unknown verb: argparse's own message
        return importlib.import_module(args._module), args
    verb = argv[0]
    module, parser = verb_parser(verb)
    if verb not in CONFIG_SECTIONS or verb == "run" or any("--config" in a.option_strings for a in parser._actions):
        return module, parser.parse_args(argv[1:])  # no config section of its own (or it reads the file itself)
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML or JSON file whose [{verb}] section sets defaults for these flags")
    path, rest = _split_config_flag(argv[1:])
    if path:
        section = load_config(path).get(verb, {})
        apply_config(parser, section, f"{path} [{verb}]")
    return module, parser.parse_args(rest)


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
    try:
        module, args = _parse(argv)
        return int(module.run(args) or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:  # a verb may say what stopped and how to resume (`run` does)
        print(f"interrupted: {e}" if str(e) else "interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
