"""Readers: instruction records from Alpaca-style JSON / JSONL (`instruction`, optional `input`, `output`; `response`
is taken when there is no `output`), the evolved format (`instruction`, `output`), Parquet (when pyarrow is installed), folders of such files, and Hugging Face
Hub dataset repos by id.

Bad input is never dropped silently. A malformed line, a record that is not an object, a missing or non-string field
raise a DataError naming the file and line (or element / row) unless `on_bad="skip"`, in which case the record is
counted under its reason in `ReadStats`. Records with an empty response (or instruction) are dropped and counted by
default (`on_empty="drop"`), since they teach nothing but EOS; `on_empty="error"` makes them fatal and
`on_empty="keep"` trains on them.
"""
from __future__ import annotations

import collections
import fnmatch
import glob
import os
import re
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from ..errors import DataError
from ..hub import parse_dataset_spec
from ..io import iter_json_values

DATA_SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz", ".parquet")
TRAIN_SPLIT = re.compile(r"(^|[/_.-])train([/_.-]|$)")


@dataclass(frozen=True)
class Example:
    """One instruction record. `source` is "file:line" (or "file[element]"/"file[row]") for messages."""

    instruction: str
    output: str
    input: str = ""
    source: str = ""


@dataclass
class ReadStats:
    files: list[dict] = field(default_factory=list)  # {"path", "records"} per file read
    records: int = 0  # records seen, bad ones included
    kept: int = 0
    skipped: collections.Counter = field(default_factory=collections.Counter)  # reason -> count
    skipped_examples: list[str] = field(default_factory=list)  # the first few "location: reason" lines

    def skip(self, reason: str, message: str) -> None:
        self.skipped[reason] += 1
        if len(self.skipped_examples) < 20:
            self.skipped_examples.append(message)

    def to_dict(self) -> dict:
        return {
            "files": self.files,
            "records": self.records,
            "kept": self.kept,
            "skipped": dict(self.skipped),
            "skipped_examples": self.skipped_examples,
        }


# ---------------------------------------------------------------------------------------------- locating files
def resolve_data_files(specs: str | Iterable[str]) -> list[str]:
    """Expand data specs into files: a file, a folder (its data files, recursively, sorted), a glob, or a hub dataset
    id `owner/name[@revision][:glob]` (also `hf://datasets/owner/name`) downloaded through huggingface_hub (a local
    path of the same name wins)."""
    if isinstance(specs, str):
        specs = [specs]
    files: list[str] = []
    for spec in specs:
        if os.path.isfile(spec):
            files.append(spec)
        elif os.path.isdir(spec):
            found = _data_files_in(spec)
            if not found:
                raise DataError(f"{spec}: folder holds no data files ({', '.join(DATA_SUFFIXES)}).")
            files += found
        elif any(c in spec for c in "*?[") and glob.glob(spec):
            files += sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
        elif _looks_like_hub_id(spec):
            files += hub_dataset_files(spec)
        else:
            raise DataError(f"{spec}: no such file or folder; check the path (or give a hub dataset id owner/name).")
    return files


def _looks_like_hub_id(spec: str) -> bool:
    """owner/name[@rev][:glob] that is not a (missing) local path: no data-file suffix, no existing first folder."""
    parsed = parse_dataset_spec(spec)
    return parsed is not None and not parsed[0].endswith(DATA_SUFFIXES) and not os.path.exists(parsed[0].split("/")[0])


def _data_files_in(folder: str, pattern: str | None = None) -> list[str]:
    out = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            path = os.path.join(root, n)
            rel = os.path.relpath(path, folder)
            if n.startswith(".") or not n.endswith(DATA_SUFFIXES):
                continue
            if pattern and not fnmatch.fnmatch(rel, pattern):
                continue
            out.append(path)
    return out


def hub_dataset_files(spec: str) -> list[str]:
    """Download (or find in the local hub cache) a dataset repo's JSON / JSONL / Parquet files and return their
    local paths: those matching the spec's `:glob`, else all of them, or only the train split's when some file names
    say "train" (e.g. data/train-00000-of-00001.parquet beside data/test-...). Honors HF_HUB_OFFLINE and HF_HUB_CACHE
    like every huggingface_hub call."""
    parsed = parse_dataset_spec(spec)
    if parsed is None:
        raise DataError(f"{spec}: not a hub dataset id; write it as owner/name[@revision][:glob].")
    repo_id, revision, pattern = parsed
    from ..errors import CheckpointError
    from ..hub import download_files

    allow = [pattern] if pattern else [f"*{s}" for s in DATA_SUFFIXES] + [f"**/*{s}" for s in DATA_SUFFIXES]
    try:
        folder = download_files(repo_id, allow, what="dataset", repo_type="dataset", revision=revision)
    except CheckpointError as e:  # offline and not cached, unknown repo, network errors: same words, data's class
        raise DataError(str(e)) from None
    files = _data_files_in(folder, pattern)
    if not files:
        raise DataError(f"{spec}: the hub dataset holds no {', '.join(DATA_SUFFIXES)} files matching {pattern or '*'}.")
    if pattern is None:
        # A repo with split files (train / test / validation): train only, so no test data leaks into training.
        # Name other files with owner/name:glob.
        train = [f for f in files if TRAIN_SPLIT.search(os.path.relpath(f, folder))]
        if train:
            files = train
    return files


# ---------------------------------------------------------------------------------------------- raw records
def iter_located_records(path: str, on_bad: str = "error", stats: ReadStats | None = None) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) for each record of a JSON array, JSONL or Parquet file. Unparseable input raises a
    DataError naming the file and line, or (on_bad="skip") is counted in `stats` and skipped."""
    if path.endswith(".parquet"):
        yield from _parquet_records(path)
        return

    def skip(lineno: int, reason: str) -> None:
        if stats is not None:
            stats.records += 1
            stats.skip("malformed_json", reason)

    yield from iter_json_values(path, on_bad_line=skip if on_bad == "skip" else None,
                                hint="fix or remove that line, or pass --skip-bad")


def _parquet_records(path: str) -> Iterator[tuple[str, dict]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading Parquet needs pyarrow; pip install pyarrow, or convert it to JSONL.") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise DataError(f"{path}: not a readable Parquet file ({e}).") from None
    row = 0
    for batch in pf.iter_batches(batch_size=4096):
        for obj in batch.to_pylist():
            yield f"{path}[row {row}]", obj
            row += 1


# ---------------------------------------------------------------------------------------------- examples
def to_example(
    loc: str, obj, field_map: dict[str, str] | None = None, on_bad: str = "error", on_empty: str = "drop",
    stats: ReadStats | None = None,
) -> Example | None:
    """Validate one raw record. Returns None for a record skipped (and counted in `stats`)."""
    fm = {"instruction": "instruction", "input": "input", "output": "output", **(field_map or {})}
    if "output" not in (field_map or {}) and "output" not in obj and isinstance(obj, dict) and "response" in obj:
        fm["output"] = "response"  # the other common name (the evolve stage accepts it too)

    def bad(reason: str, msg: str, hint: str):
        if on_bad != "skip":
            raise DataError(f"{loc}: {msg}; {hint}")
        if stats is not None:
            stats.skip(reason, f"{loc}: {msg}")
        return None

    if not isinstance(obj, dict):
        return bad("not_an_object", f"expected a JSON object, got {type(obj).__name__}", "each record must be an object.")
    values = {}
    for key in ("instruction", "output"):
        src = fm[key]
        if src not in obj:
            return bad("missing_field", f"missing field {src!r} (has {sorted(obj)[:8]})",
                       "add it, map another field with --fields, or pass --skip-bad.")
        if not isinstance(obj[src], str):
            return bad("wrong_type", f"field {src!r} is {type(obj[src]).__name__}, expected a string",
                       "fix the record or pass --skip-bad.")
        values[key] = obj[src]
    inp = obj.get(fm["input"])
    if inp is None:
        inp = ""
    if not isinstance(inp, str):
        return bad("wrong_type", f"field {fm['input']!r} is {type(inp).__name__}, expected a string",
                   "fix the record or pass --skip-bad.")
    for key, reason in (("output", "empty_response"), ("instruction", "empty_instruction")):
        if values[key].strip():
            continue
        if on_empty == "error":
            raise DataError(f"{loc}: field {fm[key]!r} is empty; remove the record or pass --on-empty drop.")
        if on_empty == "drop":
            if stats is not None:
                stats.skip(reason, f"{loc}: field {fm[key]!r} is empty")
            return None
    return Example(instruction=values["instruction"], output=values["output"], input=inp, source=loc)


def read_examples(
    specs: str | Iterable[str],
    field_map: dict[str, str] | None = None,
    on_bad: str = "error",
    on_empty: str = "drop",
    stats: ReadStats | None = None,
) -> list[Example]:
    """Read every record of every file in `specs` (paths, folders, globs or hub ids; see `resolve_data_files`), in
    order. `field_map` renames fields, e.g. {"output": "response"}. Pass a `ReadStats` to get the counts."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', not {on_bad!r}")
    if on_empty not in ("drop", "keep", "error"):
        raise ValueError(f"on_empty must be 'drop', 'keep' or 'error', not {on_empty!r}")
    stats = stats if stats is not None else ReadStats()
    out: list[Example] = []
    for path in resolve_data_files(specs):
        n, first = 0, len(out)
        for loc, obj in iter_located_records(path, on_bad=on_bad, stats=stats):
            n += 1
            stats.records += 1
            ex = to_example(loc, obj, field_map, on_bad, on_empty, stats)
            if ex is not None:
                out.append(ex)
                stats.kept += 1
        # kept_start: this file's first example index, so a shard's `source` index maps back to its file
        stats.files.append({"path": os.path.abspath(path), "records": n, "kept_start": first,
                            "kept": len(out) - first})
    return out
