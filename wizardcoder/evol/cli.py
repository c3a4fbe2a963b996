"""`wizardcoder evolve`: Evol-Instruct for code against any OpenAI-compatible endpoint, or `--filter-only` hygiene
over existing data.

    wizardcoder evolve --data code_alpaca.json --rounds 3 --out runs/evol \\
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model gpt-3.5-turbo --concurrency 32
    wizardcoder evolve --filter-only --data round0.json round1.json --out runs/filter \\
        --decontaminate-against HumanEval.jsonl mbpp.jsonl

The flags come from the config dataclasses (LLMConfig, EvolConfig, RuleConfig, HygieneConfig) through
`wizardcoder.cli_args`: one flag per field, help from the field's comment. A few fields have a flag (and config key)
other than their name, listed in `DESTS`; the field they fill is the same.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from ..cli_args import add_dataclass_arguments, dataclass_from_args, flag_name
from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, check_input_file, claim_out_dir, read_jsonl, write_jsonl
from . import hygiene as H
from . import rules as R
from .client import LLMConfig
from .engine import EvolConfig

# field -> argparse dest (= config key; the flag is its dashed form) where the two differ: the LLM's flags say
# whose they are, and the verbs share --timeout and --max-new-tokens.
DESTS: dict[type, dict[str, str]] = {
    LLMConfig: {"base_url": "llm_base_url", "model": "llm_model", "api_key_env": "llm_api_key_env",
                "style": "llm_style", "timeout_s": "timeout", "max_tokens": "max_new_tokens"},
    R.RuleConfig: {"disabled": "disable_rule"},
    H.HygieneConfig: {"benchmarks": "decontaminate_against"},
}
METAVARS = {"llm_base_url": "URL", "llm_model": "NAME", "llm_api_key_env": "VAR", "timeout": "SECONDS",
            "disable_rule": "RULE", "decontaminate_against": "FILE"}
EXCLUDE: dict[type, tuple[str, ...]] = {LLMConfig: ("extra_body",), EvolConfig: ("rules",),
                                        R.RuleConfig: ("copy_markers",), H.HygieneConfig: ()}


def _add_config(parser: argparse.ArgumentParser, cls, title: str) -> None:
    group = parser.add_argument_group(title)
    dests = DESTS.get(cls, {})
    add_dataclass_arguments(group, cls, exclude=EXCLUDE[cls], rename={f: flag_name(d) for f, d in dests.items()})
    for action in group._group_actions:
        if action.dest in dests:
            action.dest = dests[action.dest]
            action.metavar = METAVARS.get(action.dest, action.metavar)


def _config(cls, args: argparse.Namespace, **overrides):
    """`cls` built from the flags (and config keys) given, mapped back from their dests to the fields."""
    dests = DESTS.get(cls, {})
    given = {f.name: getattr(args, dests.get(f.name, f.name)) for f in dataclasses.fields(cls)
             if hasattr(args, dests.get(f.name, f.name))}
    return dataclass_from_args(cls, argparse.Namespace(**given), **overrides)


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input and output")
    g.add_argument("--data", nargs="+", metavar="FILE",
                   help="seed instructions, a JSON array or JSONL of {instruction, output} (one file); with "
                        "--filter-only, the instruction files to clean")
    g.add_argument("--out", metavar="DIR", required=True, help="output folder; a killed run resumes in the same one")
    g.add_argument("--filter-only", action="store_true",
                   help="no LLM: run the LLM-free elimination rules and hygiene over the --data files")
    g.add_argument("--no-hygiene", action="store_true", help="evolve only: stop at merged.jsonl")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config(p, EvolConfig, "evolution")
    _add_config(p, R.RuleConfig, "elimination rules")
    _add_config(p, LLMConfig, "LLM endpoint (OpenAI-compatible)")
    _add_config(p, H.HygieneConfig, "hygiene (after the merge, or alone with --filter-only)")


def _hygiene_line(rep: dict) -> str:
    para = rep.get("paraphrase", {})
    return (f"hygiene: {rep['input']} in, {rep['kept']} kept, removed {rep['removed'] or 'nothing'}; near-dup rate "
            f"{rep['near_dup_rate']:.4f}" + (f"; {para['flagged']} likely paraphrases of benchmark prompts "
                                              f"(Jaccard >= {para['threshold']}), {para['containment']['flagged']} "
                                              f"containing one (>= {para['containment']['threshold']})"
                                              if para else ""))


def _benchmarks(hyg: H.HygieneConfig | None) -> list[H.Problem] | None:
    """The benchmark problems hygiene needs, loaded before any other work (a missing file fails first)."""
    if hyg is None or not (hyg.decontaminate or hyg.measure_paraphrase):
        return None
    return H.load_benchmarks(hyg.benchmarks)


def run_filter(args, rules: R.RuleConfig, hyg: H.HygieneConfig) -> int:
    from .filter import filter_files

    rep = filter_files(args.data, args.out, rules, hyg, _benchmarks(hyg))
    for name, f in rep["files"].items():
        elim = {k: v for k, v in f["eliminated"].items() if v}
        print(f"{name}: {f['records']} records, eliminated {elim or 'none'}, hygiene removed "
              f"{f.get('hygiene_removed', 'none')}")
    print(_hygiene_line(rep["hygiene"]))
    print(f"wrote {os.path.join(args.out, 'clean.jsonl')} ({rep['kept']} samples), removed.jsonl, report.json, "
          "report.md")
    return 0


def run(args: argparse.Namespace) -> int:
    rules = _config(R.RuleConfig, args)
    hyg = _config(H.HygieneConfig, args)
    if args.filter_only:
        if not args.data:
            raise UserError("evolve --filter-only needs --data FILE [FILE ...], the instruction files to clean.")
        return run_filter(args, rules, hyg)
    missing = [flag for flag, dest in (("--data", "data"), ("--llm-base-url", "llm_base_url"),
                                       ("--llm-model", "llm_model")) if not getattr(args, dest, None)]
    if missing:
        raise UserError(f"evolve needs {', '.join(missing)} (or --filter-only --data FILES to clean existing data).")
    if len(args.data) != 1:
        raise UserError(f"evolve reads one seed file, got {len(args.data)} --data files; merge them first (or pass "
                        "--filter-only to clean several).")
    from .engine import evolve, format_summary, load_seed

    # Inputs first, in order of cost: flags, the seed file, the output folder, the benchmarks; then the LLM.
    llm = _config(LLMConfig, args)
    cfg = _config(EvolConfig, args, rules=rules)
    seed_file = args.data[0]
    check_input_file(seed_file, "seed file")
    seeds = load_seed(seed_file)
    claim_out_dir(args.out, "evolve", legacy_file="config.json")
    hyg = None if args.no_hygiene else hyg
    problems = _benchmarks(hyg)
    summary = evolve(seeds, args.out, llm, cfg, progress=not args.no_progress and sys.stderr.isatty(),
                     seed_source=seed_file)
    print(format_summary(summary))
    if hyg is None:
        print(f"dataset: {os.path.join(args.out, 'merged.jsonl')} ({summary.get('merged', 0)} samples)")
        return 0
    merged = list(read_jsonl(os.path.join(args.out, "merged.jsonl")))
    kept, removed, rep = H.clean(merged, hyg, problems)
    write_jsonl(os.path.join(args.out, "clean.jsonl"), kept)
    write_jsonl(os.path.join(args.out, "removed.jsonl"), removed)
    atomic_write_json(os.path.join(args.out, "hygiene.json"), rep)
    from .filter import format_report

    atomic_write_text(os.path.join(args.out, "hygiene.md"),
                      format_report({"files": {}, "hygiene": rep}).replace("# filter report", "# hygiene report"))
    print(_hygiene_line(rep))
    print(f"dataset: {os.path.join(args.out, 'clean.jsonl')} ({len(kept)} samples)")
    return 0
