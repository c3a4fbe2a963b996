"""Output folders: the guard that a verb writes only into a folder it made (the `.wizardcoder` marker, through
resume.Marker), and folders written atomically (built beside, renamed into place)."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from .errors import UserError
from .resume import Marker

# ---------------------------------------------------------------------------------------------- output folders
# Written into every folder the program makes, as a resume.Marker of the settings {"made_by": VERB} with, from
# atomic_dir, "files": [every file in it]. Folders made before carry {"made_by": VERB, "files": [...]}: still read.
MARKER = ".wizardcoder"


def _marker(folder: str) -> Marker:
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
