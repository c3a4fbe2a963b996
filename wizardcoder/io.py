"""Small file helpers every stage shares, so each is written once:

- reading: `read_json` (one document), `iter_json_values` / `read_records` / `read_jsonl` (JSON arrays or JSONL,
  told apart once by `sniff_json_kind`), every bad input (missing, a folder, binary, malformed line) one sentence
  naming the file and line;
- writing files: `atomic_open` / `atomic_write_text` / `atomic_write_json` / `write_jsonl` (temp + rename) and
  `JsonlAppender` (durable appends, torn tails cut);
- output folders: `make_out_dir` and `claim_out_dir` for folders filled over time (resumable runs), `atomic_dir` for
  folders written whole (temp folder + rename) that an overwrite may replace only when the program made them.
"""
from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
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


def write_jsonl(path: str, records: Iterable[dict]) -> None:
    """Write all records atomically (the file appears complete or not at all)."""
    with atomic_open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


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


# ---------------------------------------------------------------------------------------------- output folders
# Written into every folder the program makes, as a resume.Marker of the settings {"made_by": VERB} with, from
# atomic_dir, "files": [every file in it]. Folders made before carry {"made_by": VERB, "files": [...]}: still read.
MARKER = ".wizardcoder"


def _marker(folder: str):
    from .resume import Marker  # resume writes through this module's atomic_write_json

    return Marker(os.path.join(folder, MARKER))


def _write_marker(folder: str, made_by: str, **files) -> None:
    _marker(folder).write({"made_by": made_by}, **files)


def _read_marker(folder: str) -> dict | None:
    """The folder's marker as {"made_by": VERB, "files": [...]}, from a resume.Marker (its settings and files) or an
    older marker (its own fields); None when there is none."""
    data = _marker(folder).read()
    settings = data.get("settings") if data is not None and "hash" in data else data
    if not isinstance(settings, dict):
        return None
    return {"made_by": settings.get("made_by"), "files": data.get("files", [])}


def make_out_dir(path: str, flag: str = "--out", error: type[UserError] = UserError) -> str:
    """Create the output folder `path` (and its parents) if needed, for a stage that writes into it file by file
    (journals, resumable runs); a file in the way or a folder we cannot write is one sentence naming `flag`."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise error(f"{flag} {path}: is a file, not a folder; choose another {flag}.")
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a real write: permissions, read-only mounts, root alike
            pass
    except OSError as e:
        raise error(f"{flag} {path}: cannot write there ({e.strerror or e}); choose a writable {flag}.") from None
    return path


def claim_out_dir(path: str, made_by: str, flag: str = "--out", error: type[UserError] = UserError,
                  legacy_file: str | None = None) -> str:
    """`make_out_dir` for a folder a stage fills over time and resumes in (evolve's journals): a new or empty folder
    is created and marked as `made_by`'s (the MARKER file, without a file list); a folder marked by `made_by` (or,
    made before markers, holding `legacy_file`) is taken as it is; any other folder with files is refused, so a stage
    never writes its outputs over files it did not make."""
    make_out_dir(path, flag, error)
    marker = _read_marker(path)
    if marker is not None and marker.get("made_by") == made_by:
        return path
    entries = os.listdir(path)
    if legacy_file is not None and legacy_file in entries and marker is None:
        return path
    if entries:
        owner = f"made by `{marker.get('made_by')}`" if marker else "not made by wizardcoder"
        raise error(f"{flag} {path}: holds files and is {owner}, not a `{made_by}` run; choose a new or empty {flag}.")
    _write_marker(path, made_by)
    return path


# ---------------------------------------------------------------------------------------------- atomic folders


def check_out_dir(out: str, made_by: str, overwrite: bool = False, error: type[UserError] = UserError,
                  flag: str = "--out") -> None:
    """Raise `error` (one sentence) unless `atomic_dir(out, made_by, overwrite)` may write `out`: it must be absent,
    an empty folder, or (with `overwrite`) a folder that `made_by` made and that holds only the files it wrote.
    Verbs call this before their first expensive step; atomic_dir calls it again before it renames."""
    out = os.path.abspath(out)
    if os.path.islink(out):
        raise error(f"{flag} {out}: is a symbolic link; give the folder's real path.")
    _check_can_create(out, error, flag)
    if not os.path.lexists(out):
        return
    if not os.path.isdir(out):
        raise error(f"{flag} {out}: is a file, not a folder; choose another {flag}.")
    entries = os.listdir(out)
    if not entries:
        return  # an empty folder: nothing to lose
    if not overwrite:
        raise error(f"{flag} {out}: already exists; choose another {flag} or pass --overwrite.")
    marker = _read_marker(out)
    if marker is None:
        raise error(f"{flag} {out}: not a folder that wizardcoder made (no {MARKER} marker) and not empty, so "
                    f"--overwrite will not replace it; choose another {flag} or empty it yourself.")
    if marker.get("made_by") != made_by:
        raise error(f"{flag} {out}: made by `{marker.get('made_by')}`, not by `{made_by}`, so --overwrite will not "
                    f"replace it; choose another {flag}.")
    foreign = sorted(set(_list_files(out)) - set(marker.get("files", ())) - {MARKER})
    if foreign:
        raise error(f"{flag} {out}: holds {len(foreign)} file(s) that {made_by} did not write (e.g. {foreign[0]}), "
                    f"so --overwrite will not replace it; move them out or choose another {flag}.")


def _check_can_create(out: str, error: type[UserError], flag: str) -> None:
    """The temporary folder goes beside `out`: its nearest existing ancestor must be a folder we may write."""
    parent = os.path.dirname(out)
    while not os.path.lexists(parent):
        parent = os.path.dirname(parent)
    why = "not a folder" if not os.path.isdir(parent) else (
        "Permission denied" if not os.access(parent, os.W_OK | os.X_OK) else None)
    if why:
        raise error(f"{flag} {out}: cannot create a folder in {parent} ({why}); choose a writable {flag}.")


def _list_files(folder: str) -> list[str]:
    """Every non-folder entry under `folder`, as paths relative to it."""
    out = []
    for root, dirs, files in os.walk(folder):
        rel = os.path.relpath(root, folder)
        out += [f if rel == "." else os.path.join(rel, f) for f in files]
        out += [os.path.join(rel, d) for d in dirs if os.path.islink(os.path.join(root, d))]  # links are not walked
    return out


def _fsync_path(path: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove_stale(parent: str, prefix: str) -> None:
    """Remove `prefix<pid>-*` folders of processes that no longer run (left by a SIGKILL); spare live ones."""
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        try:
            os.kill(int(name[len(prefix):].split("-")[0]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class AtomicDir:
    """A folder written in a hidden temporary folder beside its target and renamed into place when complete.

    `begin()` checks the target (`check_out_dir`), removes temporaries of dead processes and returns the temporary
    folder to write into; `commit()` writes the marker (naming `made_by` and every file written), fsyncs every file
    and folder, and renames it into place (an old target goes aside first and is removed after); `abort()` removes
    the temporary folder. A crash at any point leaves the old target or the new one, never a mix. For a job over
    several processes, one process calls begin/commit and shares `path` with the others."""

    def __init__(self, out: str, made_by: str, overwrite: bool = False, error: type[UserError] = UserError,
                 flag: str = "--out"):
        self.out = os.path.abspath(out)
        self.made_by, self.overwrite, self.error, self.flag = made_by, overwrite, error, flag
        self.parent, base = os.path.split(self.out)
        self._tmp_prefix, self._old_prefix = f".{base}.tmp-", f".{base}.old-"
        self.path: str | None = None

    def begin(self) -> str:
        check_out_dir(self.out, self.made_by, self.overwrite, self.error, self.flag)
        try:
            os.makedirs(self.parent, exist_ok=True)
            _remove_stale(self.parent, self._tmp_prefix)
            _remove_stale(self.parent, self._old_prefix)
            self.path = tempfile.mkdtemp(prefix=f"{self._tmp_prefix}{os.getpid()}-", dir=self.parent)
        except OSError as e:
            raise self.error(f"{self.flag} {self.out}: cannot create a folder in {self.parent} "
                             f"({e.strerror or e}); choose a writable {self.flag}.") from None
        return self.path

    def commit(self) -> None:
        assert self.path is not None, "begin() first"
        files = sorted(_list_files(self.path))
        _write_marker(self.path, self.made_by, files=files)
        for root, dirs, names in os.walk(self.path):
            for n in names:
                _fsync_path(os.path.join(root, n))
            _fsync_path(root)
        check_out_dir(self.out, self.made_by, self.overwrite, self.error, self.flag)  # may have changed meanwhile
        if os.path.lexists(self.out) and os.listdir(self.out):
            old = tempfile.mkdtemp(prefix=f"{self._old_prefix}{os.getpid()}-", dir=self.parent)
            os.rename(self.out, os.path.join(old, "old"))
            os.rename(self.path, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.path, self.out)  # replaces an empty folder
        _fsync_path(self.parent)
        self.path = None

    def abort(self) -> None:
        if self.path is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.path = None


@contextlib.contextmanager
def atomic_dir(out: str, made_by: str, overwrite: bool = False, error: type[UserError] = UserError,
               flag: str = "--out") -> Iterator[str]:
    """`with atomic_dir(out, "pack", overwrite) as tmp:` write the folder's files into `tmp`; on success it becomes
    `out`, on any exception it is removed and `out` is left as it was. See `AtomicDir` and `check_out_dir`."""
    d = AtomicDir(out, made_by, overwrite, error, flag)
    tmp = d.begin()
    try:
        yield tmp
        d.commit()
    except BaseException:
        d.abort()
        raise
