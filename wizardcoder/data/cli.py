"""`wizardcoder pack`: tokenize instruction data and pack it into token-stream shards.

    wizardcoder pack --data evol.json more.jsonl --tokenizer bigcode/starcoder --seq-len 2048 --out shards/

Every setting is a field of `Config` (flags, `[pack]` config keys and checks come from it: wizardcoder.settings).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Literal

from ..errors import ConfigError

FIELDS = ("instruction", "input", "output")  # the record fields --fields may rename


def _field_map(text: str) -> dict[str, str | None]:
    """`output=response,instruction=prompt` -> {"output": "response", ...}; a part without `=` maps to None (the
    pairs are checked in Config.__post_init__, whether they came from a flag or a config file)."""
    pairs = (part.partition("=") for part in filter(None, text.split(",")))
    return {key: value if sep else None for key, sep, value in pairs}


@dataclass
class Config:
    data: list[str] = field(default_factory=list, metadata={
        "help": "JSON / JSONL / Parquet files (.gz allowed), folders, globs, or hub dataset ids "
                "owner/name[@revision][:glob] (required)"})
    tokenizer: str = ""  # tokenizer folder, tokenizer.json / tokenizer.model file, or hub id (required)
    seq_len: int | None = None  # tokens per pack, e.g. 2048 (required)
    out: str = ""  # shard folder to create (required)
    template: str = "alpaca"  # prompt template: 'alpaca' (WizardCoder's) or a JSON template file
    overlong: Literal["truncate", "drop"] = field(default="truncate", metadata={
        "help": "samples longer than --seq-len: keep their first N tokens (the recipe's behaviour) or drop them; "
                "both are counted"})
    boundary: Literal["separate", "joint"] = field(default="separate", metadata={
        "help": "encode prompt and response separately (what the model sees at inference) or, as WizardCoder's "
                "script does, encode the joined text and mask the prompt's token count"})
    skip_bad: bool = field(default=False, metadata={
        "help": "skip (and count) malformed lines and records with missing or non-string fields instead of stopping "
                "at the first one"})
    on_empty: Literal["drop", "keep", "error"] = field(default="drop", metadata={
        "help": "records with an empty response or instruction: drop and count them, keep, or stop"})
    fields: dict[str, str] | None = field(default=None, metadata={
        "parse": _field_map, "help": "read fields under other names, e.g. output=response,instruction=prompt"})
    seed: int = 0  # seed of the stored pack order
    packs_per_shard: int = 65536  # packs per shard file
    overwrite: bool = False  # replace --out if it exists and is a folder `pack` made (never any other folder)
    progress: bool = True  # progress bars
    json: bool = False  # print the summary as JSON instead of a table

    def __post_init__(self):
        missing = [flag for flag, value in (("--data", self.data), ("--tokenizer", self.tokenizer),
                                            ("--seq-len", self.seq_len), ("--out", self.out)) if not value]
        if missing:
            raise ConfigError(f"pack needs {', '.join(missing)}, e.g. --data evol.jsonl --tokenizer bigcode/starcoder "
                              "--seq-len 2048 --out shards/.")
        for key, value in (self.fields or {}).items():
            if key not in FIELDS or not isinstance(value, str) or not value:
                pair = key if value is None else f"{key}={value}"
                raise ConfigError(f"--fields takes ours=theirs pairs for instruction/input/output, e.g. "
                                  f"output=response; got {pair!r}.")


def run(cfg: Config) -> int:
    from .pipeline import format_summary, pack_dataset

    meta = pack_dataset(
        cfg.data, cfg.tokenizer, cfg.seq_len, cfg.out, template=cfg.template, overlong=cfg.overlong,
        on_bad="skip" if cfg.skip_bad else "error", on_empty=cfg.on_empty, field_map=cfg.fields, seed=cfg.seed,
        overwrite=cfg.overwrite, packs_per_shard=cfg.packs_per_shard, progress=cfg.progress, boundary=cfg.boundary,
    )
    if cfg.json:
        print(json.dumps(meta["summary"], indent=2))
    else:
        print(format_summary(meta))
        print(f"wrote {cfg.out}", file=sys.stderr)
    return 0
