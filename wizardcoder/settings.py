"""Every verb's settings, from one definition: a dataclass per verb gives its flags, its config-file section and
its checks.

A verb module defines

    Config               a dataclass: one field per setting, checked in its `__post_init__` (the one place)
    run(cfg: Config) -> int

and each field is, at once,
- a flag: `--field-name` (or the spellings in `metadata={"flags": (...)}`; help shows the first), typed from the
  annotation (`int`, `float`, `str`, `X | None`, `list[X]`, `Literal[...]` as choices, `bool` as `--x/--no-x`), with
  the help from `metadata={"help": ...}` or else the field's trailing `# comment` in the source;
- a key of the verb's `[section]` in a TOML or JSON config file (the field's name, or `metadata={"key": ...}`), its
  value converted and checked by the same rules as the flag's;
- a default: the dataclass's.
A field whose type is itself a dataclass is a *group*: its fields are flags under the heading
`metadata={"title": ...}` and keys of the same flat section, and the group object is built from them (evolve's LLM,
rules and hygiene; evaluate's generation settings). `metadata={"positional": True}` makes a field a positional
argument; `metadata={"parse": fn}` reads a string with `fn` (e.g. "a=b,c=d" into a dict); `metadata={"repeat": True}`
makes a list take one value per flag (`--set a=1 --set b=2`), so it never swallows a positional after it.

`parse(Config, argv, section)` is the one path from a command line and a config section to a Config: the section's
values are the defaults, flags the user gave override them, and the object is built (and so checked) once. The
pipeline calls `build(Config, section)` on its resolved sections and hands the object to the verb's `run`.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, TypeVar

from .errors import ConfigError

T = TypeVar("T")


# -------------------------------------------------------------------------------------------------- the settings


@dataclass(frozen=True)
class Setting:
    """One leaf field of a verb's Config, flattened out of its groups."""

    key: str  # the config-file key and the argparse dest
    path: tuple[str, ...]  # attribute path from the Config (group fields, then the field)
    type: Any  # the annotation with `| None` removed
    optional: bool  # the annotation allows None
    default: Any
    flags: tuple[str, ...]
    help: str
    title: str | None  # the group's heading (None: top level)
    positional: bool = False
    parse: Callable[[str], Any] | None = None
    repeat: bool = False  # a list given one value per flag (metadata "repeat")

    @property
    def flag(self) -> str:
        return self.key if self.positional else self.flags[0]

    @property
    def many(self) -> bool:
        return typing.get_origin(self.type) in (list, tuple)


def _field_comments(cls) -> dict[str, str]:
    """`name: type = default  # help text` -> {name: help text}, read from the class source (empty if unavailable)."""
    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = inspect.getsource(klass)
        except (OSError, TypeError):
            continue
        for m in re.finditer(r"^\s+(\w+)\s*:[^#\n]*#\s*(.+)$", src, re.M):
            comments[m.group(1)] = m.group(2).strip()
    return comments


def _unwrap_optional(tp):
    """`X | None` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def settings(cls, _path: tuple[str, ...] = (), _title: str | None = None) -> dict[str, Setting]:
    """key -> Setting for every leaf field of `cls` (groups flattened), the class's own fields before inherited ones.
    Two leaves with one key are a definition error."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    out: dict[str, Setting] = {}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited):
        if not f.init or f.name.startswith("_"):
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            sub = settings(tp, (*_path, f.name), f.metadata.get("title", _title))
        else:
            key = f.metadata.get("key", f.name)
            default = _default(f)
            help_ = f.metadata.get("help") or comments.get(f.name, "")
            if default not in ("", None, []):  # an empty default says nothing (a required setting, or "none")
                help_ = f"{help_} (default: {default!r})" if help_ else f"(default: {default!r})"
            sub = {key: Setting(key, (*_path, f.name), tp, optional, default,
                                tuple(f.metadata.get("flags", (flag_name(key),))), help_, _title,
                                bool(f.metadata.get("positional")), f.metadata.get("parse"),
                                bool(f.metadata.get("repeat")))}
        for key in sub:
            if key in out:
                raise TypeError(f"{cls.__name__}: two settings are called {key!r}")
        out.update(sub)
    return out


# ---------------------------------------------------------------------------------------------------- argparse


def _optional(tp):
    """`--max-steps none` -> None, else tp(value): lets a flag clear a value set by a config file."""
    def parse(s: str):
        return None if s.lower() in ("none", "null") else tp(s)
    parse.__name__ = tp.__name__
    return parse


def add_arguments(parser: argparse.ArgumentParser, cls, exclude: Iterable[str] = ()) -> None:
    """One flag (or positional) per setting of `cls`, grouped under their group's title. Every flag's default is
    SUPPRESS, so what the user gave can be told from what they did not (a config value or the default stays)."""
    skip = set(exclude)
    groups: dict[str | None, Any] = {None: parser}
    for s in settings(cls).values():
        if s.key in skip:
            continue
        if s.title not in groups:
            groups[s.title] = parser.add_argument_group(s.title)
        target = groups[s.title]
        kw: dict[str, Any] = {"help": s.help.replace("%", "%%")}
        if not s.positional:
            kw.update(dest=s.key, default=argparse.SUPPRESS)
        origin = typing.get_origin(s.type)
        if s.parse is not None:
            kw.update(type=s.parse, metavar=s.key.upper())
        elif s.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            choices = typing.get_args(s.type)
            kw.update(choices=choices, type=type(choices[0]))
        elif origin in (list, tuple):
            (item,) = typing.get_args(s.type)[:1] or (str,)
            if s.repeat:  # one value per flag, the flag repeated: `--set a=1 --set b=2 FILE` leaves FILE alone
                kw.update(type=item, metavar=s.key.upper(), action="append")
            else:  # `--x a b` and `--x a --x b` alike
                kw.update(nargs="*", type=item, metavar=s.key.upper(), action="extend")
        elif s.type in (int, float, str):
            kw.update(type=_optional(s.type) if s.optional and s.type is not str else s.type,
                      metavar=s.key.upper() if s.type is str else s.type.__name__.upper())
        else:
            kw.update(type=str)
        target.add_argument(*((s.key,) if s.positional else s.flags), **kw)


class _RaisingParser(argparse.ArgumentParser):
    """Parse errors as a ConfigError (one sentence) instead of usage + exit, for parsers run inside a program."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}.")


def parser_for(cls, prog: str, description: str = "", raising: bool = False) -> argparse.ArgumentParser:
    parser = (_RaisingParser if raising else argparse.ArgumentParser)(prog=prog, description=description)
    add_arguments(parser, cls)
    return parser


# ------------------------------------------------------------------------------------------------ config values


def _type_name(s: Setting) -> str:
    origin = typing.get_origin(s.type)
    if origin is typing.Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(s.type)))
    if origin in (list, tuple):
        (item,) = typing.get_args(s.type)[:1] or (str,)
        return f"a list of {item.__name__}"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(
        s.type, getattr(s.type, "__name__", str(s.type)))


def coerce(s: Setting, value: Any, where: str) -> Any:
    """A config-file value as the setting holds it, or one sentence naming `where` (file, section and key)."""
    if value is None:
        if s.optional:
            return None
        raise ConfigError(f"{where}: must be {_type_name(s)} (it is the flag {s.flag}), got null.")
    origin = typing.get_origin(s.type)
    if s.parse is not None and isinstance(value, str):
        try:
            return s.parse(value)
        except (ValueError, TypeError, argparse.ArgumentTypeError) as e:
            raise ConfigError(f"{where}: {value!r} is not valid for {s.flag} ({e}).") from None
    if origin in (list, tuple):
        (item,) = typing.get_args(s.type)[:1] or (str,)
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_scalar(s, item, v, where) for v in items]
    if isinstance(value, (list, dict)) and s.parse is None:
        raise ConfigError(f"{where}: takes one value (flag {s.flag}), got {type(value).__name__} {value!r}.")
    if origin is typing.Literal:
        if value not in typing.get_args(s.type):
            raise ConfigError(f"{where}: {value!r} is not {_type_name(s)} (flag {s.flag}).")
        return value
    return _scalar(s, s.type, value, where)


def _scalar(s: Setting, tp, value: Any, where: str) -> Any:
    ok = {bool: lambda v: isinstance(v, bool),
          int: lambda v: isinstance(v, int) and not isinstance(v, bool),
          float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
          str: lambda v: isinstance(v, str)}.get(tp)
    if ok is None:
        return value
    if not ok(value):
        raise ConfigError(f"{where}: must be {_type_name(s) if tp is s.type else 'a list of ' + tp.__name__} "
                          f"(it is the flag {s.flag}), got {value!r}.")
    return float(value) if tp is float else value


def check_section(cls, section: dict, where: str) -> dict[str, Any]:
    """The section's keys known and its values of the right types (converted), without building the Config (some
    settings may still be missing: the pipeline wires them in later)."""
    known = settings(cls)
    out = {}
    for key, value in section.items():
        if key not in known:
            raise ConfigError(f"{where}: unknown field {key!r}; valid fields are {', '.join(sorted(known))}.")
        out[key] = coerce(known[key], value, f"{where} {key}")
    return out


def build(cls: type[T], values: dict, where: str = "") -> T:
    """`cls` from flat key -> value (checked, converted, groups assembled); the dataclass checks the rest."""
    known = settings(cls)
    values = check_section(cls, values, where or cls.__name__)
    nested: dict = {}
    for key, value in values.items():
        node = nested
        *groups, name = known[key].path
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = value
    return _construct(cls, nested)


def _construct(cls, tree: dict):
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        if f.name not in tree:
            tp, _ = _unwrap_optional(hints[f.name])
            if dataclasses.is_dataclass(tp) and f.default is dataclasses.MISSING \
                    and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                kwargs[f.name] = _construct(tp, {})
            continue
        tp, _ = _unwrap_optional(hints[f.name])
        kwargs[f.name] = _construct(tp, tree[f.name]) if dataclasses.is_dataclass(tp) else tree[f.name]
    return cls(**kwargs)


def values_of(cfg) -> dict[str, Any]:
    """The flat key -> value of a Config (the inverse of `build`): what a config section holding it would say."""
    out = {}
    for key, s in settings(type(cfg)).items():
        obj = cfg
        for name in s.path:
            obj = getattr(obj, name)
        out[key] = obj
    return out


def replace(cfg: T, **changes) -> T:
    """A copy of `cfg` with flat keys changed (through groups), built and checked again."""
    return build(type(cfg), {**values_of(cfg), **changes})


def parse(cls: type[T], argv: list[str], section: dict | None = None, where: str = "", prog: str = "",
          description: str = "", raising: bool = False) -> T:
    """The Config from a config section (defaults) and a command line (overrides): one parse, one build, one check.
    `where` names the section in errors, e.g. "run.toml [train]"."""
    parser = parser_for(cls, prog or cls.__name__, description, raising)
    given = vars(parser.parse_args(argv))
    return build(cls, {**(section or {}), **given}, where)  # build checks the section's keys and values once


def dumps(cfg) -> str:
    """The Config as its section would be written (JSON), e.g. into a run folder."""
    return json.dumps(values_of(cfg), indent=2, sort_keys=True, default=str)
