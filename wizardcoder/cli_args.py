"""Command-line flags derived from config dataclasses, so a field and its flag can never drift apart.

`add_dataclass_arguments(parser, TrainConfig)` adds one `--field-name` flag per field: the type from the annotation
(`int`, `float`, `str`, `X | None`, `list[str]`, `Literal[...]` as choices, `bool` as `--x/--no-x`), the default from
the dataclass, the help from `metadata={"help": ...}` or else the field's trailing `# comment` in the source, the
spellings from `metadata={"flags": ("--first", "--alias")}` when a field has more than one (help shows the first). Every
flag's default is `argparse.SUPPRESS`, so `dataclass_from_args` can tell a flag the user gave (it overrides) from one
they did not (the dataclass default, or a value from `--config`, stays).
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import types
import typing
from typing import Any, Iterable, TypeVar

T = TypeVar("T")


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
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_dataclass_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, cls,
                            exclude: Iterable[str] = (), rename: dict[str, str] | None = None) -> None:
    """One flag per field of dataclass `cls` (minus `exclude`); `rename` maps a field to another flag spelling."""
    hints = typing.get_type_hints(cls)
    comments = _field_comments(cls)
    rename = rename or {}
    skip = set(exclude)
    # the class's own fields first, then those it inherits (a shared group such as profiling.ProfileConfig)
    inherited = {f.name for base in cls.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)}
    for f in sorted(dataclasses.fields(cls), key=lambda f: f.name in inherited):
        if f.name in skip or not f.init or f.name.startswith("_"):
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        help_ = f.metadata.get("help") or comments.get(f.name, "")
        help_ = f"{help_} (default: {default!r})" if help_ else f"(default: {default!r})"
        kw: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": help_.replace("%", "%%")}
        flags = (rename[f.name],) if f.name in rename else tuple(f.metadata.get("flags", (flag_name(f.name),)))
        origin = typing.get_origin(tp)
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is typing.Literal:
            choices = typing.get_args(tp)
            kw.update(choices=choices, type=type(choices[0]))
        elif origin in (list, tuple):
            (item,) = typing.get_args(tp)[:1] or (str,)
            kw.update(nargs="*", type=item, metavar=f.name.upper())
        elif tp in (int, float, str):
            kw.update(type=tp, metavar=f.name.upper() if tp is str else tp.__name__.upper())
        else:
            kw.update(type=str)
        if optional and tp in (int, float):
            kw["type"] = _optional(tp)
        parser.add_argument(*flags, **kw)


def _optional(tp):
    """`--max-steps none` -> None, else tp(value): lets a flag clear a value set by a config file."""
    def parse(s: str):
        return None if s.lower() in ("none", "null") else tp(s)
    parse.__name__ = tp.__name__
    return parse


def dataclass_from_args(cls: type[T], args: argparse.Namespace, base: T | None = None, **overrides) -> T:
    """`base` (or the dataclass defaults) with every field the user gave on the command line, then `overrides`."""
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    given = {k: v for k, v in vars(args).items() if k in names}
    given.update(overrides)
    if base is None:
        return cls(**given)
    return dataclasses.replace(base, **given)
