"""One way to say "this output was made by these settings": a small JSON marker beside (or inside) the output.

    marker = Marker(os.path.join(out, "generation.json"))
    if marker.matches(settings):          # same settings as the finished output: reuse it
        ...
    marker.check(settings, "--out " + out, "rerun with those settings or choose a new --out")  # or one sentence
    marker.write(settings, state="done")  # atomically, after the output is complete

The marker holds `hash` (of the settings, canonical JSON), `settings` (to name what changed), `state` and any extra
fields. Generate's journal, evaluate's reuse of its samples, the pipeline's stage markers, the output-folder guard and
training's run identity all use it.
"""
from __future__ import annotations

import hashlib
import json
import os
from typing import Any

from .errors import ConfigError
from .io import atomic_write_json


def settings_hash(settings: Any) -> str:
    """A short, stable hash of JSON-able settings (key order does not matter)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changes(old: dict, new: dict) -> list[str]:
    """`key: old -> new` for every key whose value differs (in key order of `new`, then keys only `old` has)."""
    keys = list(new) + [k for k in old if k not in new]
    return [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


class Marker:
    """A JSON file recording the settings (and their hash) that made an output."""

    def __init__(self, path: str):
        self.path = path

    def read(self) -> dict | None:
        """The marker's fields; None when there is none (or it is unreadable: a torn or foreign file is no proof)."""
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def exists(self) -> bool:
        return self.read() is not None

    def write(self, settings: Any, state: str = "done", **extra) -> None:
        """Record `settings` atomically, with their hash, a state and `extra` fields."""
        atomic_write_json(self.path, {"hash": settings_hash(settings), "state": state, "settings": settings, **extra})

    def matches(self, settings: Any, state: str | None = "done") -> bool:
        """The marker records exactly these settings (and, unless `state` is None, that state)."""
        data = self.read()
        return (data is not None and data.get("hash") == settings_hash(settings)
                and (state is None or data.get("state") == state))

    def check(self, settings: dict, what: str, fix: str) -> None:
        """Nothing when there is no marker or it records these settings; otherwise one sentence naming `what` (the
        output), each changed setting and `fix` (what to do)."""
        data = self.read()
        if data is None or data.get("hash") == settings_hash(settings):
            return
        old = data.get("settings") if isinstance(data.get("settings"), dict) else {}
        diff = "; ".join(changes(old, settings)) or "settings of another version"
        raise ConfigError(f"{what} holds output made with other settings ({diff}); {fix}.")

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
