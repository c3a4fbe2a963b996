"""Small file helpers every stage shares, so each is written once:

- reading: `read_json` (one document), `iter_json_values` / `read_records` / `read_jsonl` (JSON arrays or JSONL,
  told apart once by `sniff_json_kind`), every bad input (missing, a folder, binary, malformed line) one sentence
  naming the file and line;
- writing files: `atomic_open` / `atomic_write_text` / `atomic_write_json` / `write_jsonl` (temp + rename) and
  `JsonlAppender` (durable appends, torn tails cut).

Output folders (the made-by guard and atomic folders) are in outdir.py.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from typing import IO, Any, Iterable, Iterator

from .errors import DataError, UserError


def open_text(path: str, mode: str = "rt") -> IO[str]:
    """Open a text file, transparently gunzipping `*.gz`."""
    if path.endswith(".gz"):
        return gzip.open(path, mode, encoding="utf-8")
    return open(path, mode, encoding="utf-8")


# ---------------------------------------------------------------------------------------------- reading
def check_input_file(path: str, what: str = "file") -> None:
    """Raise a DataError (one sentence) unless `path` is an existing regular file we may read."""
    if not os.path.exists(path):
        raise DataError(f"{path}: no such {what}; check the path.")
    if os.path.isdir(path):
        raise DataError(f"{path}: is a folder, not a file; give the {what} itself.")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: not readable (permission denied); fix its permissions.")


def _not_text(path: str, e: Exception) -> DataError:
    why = "not a UTF-8 text file" if isinstance(e, UnicodeDecodeError) else f"unreadable ({e})"
    return DataError(f"{path}: {why}; give a JSON or JSONL file (optionally .gz).")


def _lines(path: str, f: IO[str]) -> Iterator[tuple[int, str]]:
    """(line number, line) of an open text file; undecodable bytes or a broken gzip stream are one DataError."""
    try:
        yield from enumerate(f, 1)
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise _not_text(path, e) from None


def read_json(path: str, what: str = "file", error: type[UserError] = DataError, hint: str = "fix the file"):
    """One JSON document from `path`; a missing, unreadable, binary or malformed file is one sentence (`error`)
    naming it as `what`, ending with `hint`."""
    try:
        check_input_file(path, what)
        with open_text(path) as f:
            return json.load(f)
    except DataError as e:
        raise error(str(e)) from None
    except json.JSONDecodeError as e:
        raise error(f"{path}:{e.lineno}: not valid JSON ({e.msg}); {hint}.") from None
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise error(f"{path}: {'not a UTF-8 text file' if isinstance(e, UnicodeDecodeError) else e}; {hint}.") from None


def sniff_json_kind(path: str) -> str:
    """"json" for a file holding one JSON array, "jsonl" for one value per line (or an empty file), told from the
    first non-blank character whatever the file's name; anything else is a DataError naming the file."""
    check_input_file(path)
    try:
        with open_text(path) as f:
            head = f.read(4096).lstrip()
    except (UnicodeDecodeError, OSError, EOFError) as e:
        raise _not_text(path, e) from None
    if head.startswith("["):
        return "json"
    if head.startswith("{") or not head:
        return "jsonl"
    raise DataError(f"{path}: not JSON or JSONL (starts with {head[:20]!r}); give a .json array or a .jsonl file.")


def iter_json_values(path: str, kind: str | None = None, on_bad_line=None,
                     hint: str = "fix or remove that line") -> Iterator[tuple[str, Any]]:
    """(location, value) for every record of a JSON array or JSONL file, gzipped or not: location is "path:LINE" for
    JSONL and "path[INDEX]" for an array. `kind` ("json" / "jsonl") skips the sniffing. A JSONL line that is not
    valid JSON raises a DataError naming the file and line, or, when `on_bad_line(lineno, reason)` is given, is
    passed to it and skipped (`hint` ends the error's sentence). Values are yielded as parsed (the caller decides what
    a record must be)."""
    kind = kind or sniff_json_kind(path)
    if kind == "json":
        with open_text(path) as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}); fix the file.") from None
            except (UnicodeDecodeError, OSError, EOFError) as e:
                raise _not_text(path, e) from None
        if not isinstance(data, list):
            raise DataError(f"{path}: a JSON {type(data).__name__}, not an array of records; give a .json array.")
        for i, value in enumerate(data):
            yield f"{path}[{i}]", value
        return
    check_input_file(path)
    first = True
    with open_text(path) as f:
        for lineno, line in _lines(path, f):
            if not line.strip():
                continue
            try:
                value = json.loads(line)
            except json.JSONDecodeError as e:
                if first:
                    _refuse_one_document(path)
                reason = f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})"
                if on_bad_line is None:
                    raise DataError(f"{reason}; {hint}.") from None
                on_bad_line(lineno, reason)
                continue
            finally:
                first = False
            yield f"{path}:{lineno}", value


def _refuse_one_document(path: str) -> None:
    """A first line that is not JSON may start one pretty-printed object (`{"data": [...]}`): say so rather than
    naming line 1."""
    try:
        with open_text(path) as f:
            doc = json.load(f)
    except (ValueError, OSError, EOFError):
        return
    raise DataError(f"{path}: one JSON {type(doc).__name__}, not an array of records or one record per line; give a "
                    ".json array or a .jsonl file.")


def _objects(path: str, kind: str | None, skip_bad: bool, errors: list | None) -> Iterator[dict]:
    def skip(where, reason):
        if errors is not None:
            errors.append((where, reason))

    for loc, value in iter_json_values(path, kind, on_bad_line=skip if skip_bad else None):
        if isinstance(value, dict):
            yield value
            continue
        reason = f"{loc}: expected a JSON object, got {type(value).__name__}"
        if not skip_bad:
            raise DataError(reason + "; each record must be one object.")
        skip(loc, reason)


def read_jsonl(path: str, skip_bad: bool = False, errors: list | None = None) -> Iterator[dict]:
    """Yield one dict per non-empty line of a JSONL file (`.gz` allowed). A malformed line raises a DataError naming
    the file and line; with `skip_bad` it is recorded in `errors` as (where, reason) and skipped instead."""
    return _objects(path, "jsonl", skip_bad, errors)


def read_records(path: str, skip_bad: bool = False, errors: list | None = None) -> Iterator[dict]:
    """Read a JSON array file or a JSONL file, gzipped or not, as dicts, whatever its name says (`sniff_json_kind`);
    malformed input as in `read_jsonl`."""
    return _objects(path, None, skip_bad, errors)


# ---------------------------------------------------------------------------------------------- writing files
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str, mode: str = "w", **kwargs) -> Iterator[IO]:
    """Write to a temporary file beside `path` and rename it into place on success, so a reader never sees a
    half-written file; on an exception the temporary file is removed and `path` is left as it was."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; the result gets the mode open() would have given it
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


def write_jsonl(path: str, records: Iterable[dict | str]) -> None:
    """Write all records atomically (the file appears complete or not at all); a str is a record's line as
    JsonlAppender.write returned it."""
    with atomic_open(path, "w") as f:
        for r in records:
            f.write(r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) + "\n")


class JsonlAppender:
    """Append records to a JSONL file, one flushed (and optionally fsynced) line each, so a killed job loses at most
    the record being written. A torn last line left by a crash is cut off when the file is opened again."""

    def __init__(self, path: str, fsync: bool = False):
        self.path = path
        self.fsync = fsync
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        _truncate_torn_tail(path)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> str:
        """Append `record`; returns its line (what write_jsonl would write for it)."""
        line = json.dumps(record, ensure_ascii=False) + "\n"
        self._f.write(line)
        self._f.flush()
        if self.fsync:
            os.fsync(self._f.fileno())
        return line

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
