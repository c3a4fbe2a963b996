"""Small file helpers every stage shares: atomic writes, durable JSONL appends, and record readers that name the
file and line of bad input."""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from typing import IO, Any, Iterable, Iterator

from .errors import DataError


def open_text(path: str, mode: str = "rt") -> IO[str]:
    """Open a text file, transparently gunzipping `*.gz`."""
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Write to a temporary file beside `path` and rename it into place on success, so a reader never sees a
    half-written file; on an exception the temporary file is removed and `path` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {}), **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_json(path: str, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


class JsonlAppender:
    """Append records to a JSONL file, one flushed (and optionally fsynced) line each, so a killed job loses at most
    the record being written. A torn last line left by a crash is cut off when the file is opened again."""

    def __init__(self, path: str, fsync: bool = False):
        self.path = path
        self.fsync = fsync
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _truncate_torn_tail(path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _truncate_torn_tail(path: str) -> None:
    """Drop a last line without a newline (a write interrupted by a crash)."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return
    with open(path, "rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


def read_jsonl(path: str, skip_bad: bool = False, errors: list | None = None) -> Iterator[dict]:
    """Yield one dict per non-empty line of a JSONL file (`.gz` allowed). A malformed line raises a DataError naming
    the file and line; with `skip_bad` it is recorded in `errors` as (line, reason) and skipped instead."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; check the path.")
    with open_text(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                reason = f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                if skip_bad:
                    if errors is not None:
                        errors.append((lineno, reason))
                    continue
                raise DataError(reason + "; fix or remove that line.") from None
            if not isinstance(obj, dict):
                reason = f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}"
                if skip_bad:
                    if errors is not None:
                        errors.append((lineno, reason))
                    continue
                raise DataError(reason + "; each line must be one object.")
            yield obj


def read_records(path: str, skip_bad: bool = False, errors: list | None = None) -> Iterator[dict]:
    """Read a JSON array file (`.json`) or a JSONL file (`.jsonl`, or anything else), gzipped or not, as dicts.
    The format is detected from the first non-blank character, so a `.json` file holding JSONL also works."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such file; check the path.")
    with open_text(path) as f:
        head = f.read(4096).lstrip()
    if head.startswith("["):
        with open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg}); fix the file.") from None
        for i, obj in enumerate(data):
            if not isinstance(obj, dict):
                reason = f"{path}: element {i} is {type(obj).__name__}, expected an object"
                if skip_bad:
                    if errors is not None:
                        errors.append((i, reason))
                    continue
                raise DataError(reason + ".")
            yield obj
    elif head.startswith("{") or not head:
        yield from read_jsonl(path, skip_bad=skip_bad, errors=errors)
    else:
        raise DataError(f"{path}: not JSON or JSONL (starts with {head[:20]!r}); give a .json array or a .jsonl file.")


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    """Write all records atomically (the file appears complete or not at all)."""
    with atomic_open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
