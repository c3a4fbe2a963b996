"""`wizardcoder pack`: tokenize instruction data and pack it into token-stream shards.

    wizardcoder pack --data evol.json more.jsonl --tokenizer bigcode/starcoder --seq-len 2048 --out shards/
"""
from __future__ import annotations

import argparse
import json
import sys

def _field_map(text: str) -> dict[str, str]:
    out = {}
    for part in filter(None, text.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in ("instruction", "input", "output") or not value:
            raise argparse.ArgumentTypeError(
                f"--fields takes ours=theirs pairs for instruction/input/output, e.g. output=response; got {part!r}"
            )
        out[key] = value
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="FILE",
                   help="JSON / JSONL / Parquet files (.gz allowed), folders, globs, or hub dataset ids "
                        "owner/name[@revision][:glob]")
    p.add_argument("--tokenizer", required=True, metavar="PATH",
                   help="tokenizer folder, tokenizer.json / tokenizer.model file, or hub id")
    p.add_argument("--seq-len", type=int, required=True, metavar="N", help="tokens per pack (e.g. 2048)")
    p.add_argument("--out", required=True, metavar="DIR", help="shard folder to create")
    p.add_argument("--template", default="alpaca",
                   help="prompt template: 'alpaca' (WizardCoder's, the default) or a JSON template file")
    p.add_argument("--overlong", choices=("truncate", "drop"), default="truncate",
                   help="samples longer than --seq-len: keep their first N tokens (the recipe's behaviour; default) "
                        "or drop them; both are counted")
    p.add_argument("--boundary", choices=("separate", "joint"), default="separate",
                   help="encode prompt and response separately (default: what the model sees at inference) or, as "
                        "WizardCoder's script does, encode the joined text and mask the prompt's token count")
    p.add_argument("--skip-bad", action="store_true",
                   help="skip (and count) malformed lines and records with missing or non-string fields instead of "
                        "stopping at the first one")
    p.add_argument("--on-empty", choices=("drop", "keep", "error"), default="drop",
                   help="records with an empty response or instruction: drop and count them (default), keep, or stop")
    p.add_argument("--fields", type=_field_map, default=None, metavar="ours=theirs,...",
                   help="read fields under other names, e.g. output=response,instruction=prompt")
    p.add_argument("--seed", type=int, default=0, help="seed of the stored pack order (default 0)")
    p.add_argument("--packs-per-shard", type=int, default=65536, help="packs per shard file (default 65536)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it exists and is a folder `pack` made (never any other folder)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    from .pipeline import format_summary, pack_dataset

    meta = pack_dataset(
        args.data, args.tokenizer, args.seq_len, args.out, template=args.template, overlong=args.overlong,
        on_bad="skip" if args.skip_bad else "error", on_empty=args.on_empty, field_map=args.fields, seed=args.seed,
        overwrite=args.overwrite, packs_per_shard=args.packs_per_shard, progress=not args.no_progress,
        boundary=args.boundary,
    )
    if args.json:
        print(json.dumps(meta["summary"], indent=2))
    else:
        print(format_summary(meta))
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
