"""`wizardcoder evolve`: Evol-Instruct for code against any OpenAI-compatible endpoint, or `--filter-only` hygiene
over existing data.

    wizardcoder evolve --data code_alpaca.json --rounds 3 --out runs/evol \\
        --llm-base-url http://127.0.0.1:8000/v1 --llm-model gpt-3.5-turbo --concurrency 32
    wizardcoder evolve --filter-only --data round0.json round1.json --out runs/filter \\
        --decontaminate-against HumanEval.jsonl mbpp.jsonl

`Config` is every setting (wizardcoder.settings makes the flags and the `[evolve]` config keys from it): the input and
output, and the groups EvolConfig (with its RuleConfig), LLMConfig and HygieneConfig. A few fields have a flag and key
other than their name, set on the field (`metadata={"key": ...}`): the LLM's say whose they are (`llm_base_url`,
`llm_model`, `llm_api_key_env`, `llm_style`, `llm_max_tokens`), and `timeout`, `disable_rule`, `decontaminate_against`.
"""
from __future__ import annotations

import dataclasses
import os
import sys

from ..errors import ConfigError
from ..io import atomic_write_json, atomic_write_text, check_input_file, read_jsonl, write_jsonl
from ..outdir import claim_out_dir
from . import hygiene as H
from .client import LLMConfig
from .evolution import EvolConfig


@dataclasses.dataclass
class Config:
    """`wizardcoder evolve`'s settings, checked here before any work."""

    data: list[str] = dataclasses.field(default_factory=list, metadata={"help": (
        "seed instructions, a JSON array or JSONL of {instruction, output} (one file); with --filter-only, the "
        "instruction files to clean")})
    out: str | None = None  # output folder; a killed run resumes in the same one
    filter_only: bool = False  # no LLM: run the LLM-free elimination rules and hygiene over the --data files
    hygiene: bool = True  # evolve: clean merged.jsonl into clean.jsonl (--no-hygiene stops at merged.jsonl)
    progress: bool = True  # progress bar (on a terminal)
    evol: EvolConfig = dataclasses.field(default_factory=EvolConfig, metadata={"title": "evolution"})
    llm: LLMConfig = dataclasses.field(default_factory=LLMConfig,
                                       metadata={"title": "LLM endpoint (OpenAI-compatible)"})
    hyg: H.HygieneConfig = dataclasses.field(default_factory=H.HygieneConfig, metadata={
        "title": "hygiene (after the merge, or alone with --filter-only)"})

    def __post_init__(self):
        if not self.out:
            raise ConfigError("evolve needs --out DIR, the output folder.")
        if self.filter_only:
            if not self.data:
                raise ConfigError("evolve --filter-only needs --data FILE [FILE ...], the instruction files to clean.")
            return
        missing = [flag for flag, value in (("--data", self.data), ("--llm-base-url", self.llm.base_url),
                                            ("--llm-model", self.llm.model)) if not value]
        if missing:
            raise ConfigError(f"evolve needs {', '.join(missing)} (or --filter-only --data FILES to clean existing "
                              "data).")
        if len(self.data) != 1:
            raise ConfigError(f"evolve reads one seed file, got {len(self.data)} --data files; merge them first (or "
                              "pass --filter-only to clean several).")


def _hygiene_line(rep: dict) -> str:
    para = rep.get("paraphrase", {})
    return (f"hygiene: {rep['input']} in, {rep['kept']} kept, removed {rep['removed'] or 'nothing'}; near-dup rate "
            f"{rep['near_dup_rate']:.4f}" + (f"; {para['flagged']} likely paraphrases of benchmark prompts "
                                              f"(Jaccard >= {para['threshold']}), {para['containment']['flagged']} "
                                              f"containing one (>= {para['containment']['threshold']})"
                                              if para else ""))


def _benchmarks(hyg: H.HygieneConfig | None) -> list[H.Reference] | None:
    """The benchmark problems hygiene needs, loaded before any other work (a missing file fails first)."""
    if hyg is None or not (hyg.decontaminate or hyg.measure_paraphrase):
        return None
    return H.load_benchmarks(hyg.benchmarks)


def run_filter(cfg: Config) -> int:
    from .filter import filter_files

    rep = filter_files(cfg.data, cfg.out, cfg.evol.rules, cfg.hyg, _benchmarks(cfg.hyg))
    for name, f in rep["files"].items():
        elim = {k: v for k, v in f["eliminated"].items() if v}
        print(f"{name}: {f['records']} records, eliminated {elim or 'none'}, hygiene removed "
              f"{f.get('hygiene_removed', 'none')}")
    print(_hygiene_line(rep["hygiene"]))
    print(f"wrote {os.path.join(cfg.out, 'clean.jsonl')} ({rep['kept']} samples), removed.jsonl, report.json, "
          "report.md")
    return 0


def run(cfg: Config) -> int:
    if cfg.filter_only:
        return run_filter(cfg)
    from .evolution import evolve, format_summary, load_seed

    # Inputs first, in order of cost: the settings (checked already), the seed file, the output folder, the
    # benchmarks; then the LLM.
    seed_file = cfg.data[0]
    check_input_file(seed_file, "seed file")
    seeds = load_seed(seed_file)
    claim_out_dir(cfg.out, "evolve", legacy_file="config.json")
    hyg = cfg.hyg if cfg.hygiene else None
    problems = _benchmarks(hyg)
    summary = evolve(seeds, cfg.out, cfg.llm, cfg.evol, progress=cfg.progress and sys.stderr.isatty(),
                     seed_source=seed_file)
    print(format_summary(summary))
    if hyg is None:
        print(f"dataset: {os.path.join(cfg.out, 'merged.jsonl')} ({summary.get('merged', 0)} samples)")
        return 0
    merged = list(read_jsonl(os.path.join(cfg.out, "merged.jsonl")))
    kept, removed, rep = H.clean(merged, hyg, problems)
    write_jsonl(os.path.join(cfg.out, "clean.jsonl"), kept)
    write_jsonl(os.path.join(cfg.out, "removed.jsonl"), removed)
    atomic_write_json(os.path.join(cfg.out, "hygiene.json"), rep)
    from .filter import format_report

    atomic_write_text(os.path.join(cfg.out, "hygiene.md"),
                      format_report({"files": {}, "hygiene": rep}).replace("# filter report", "# hygiene report"))
    print(_hygiene_line(rep))
    print(f"dataset: {os.path.join(cfg.out, 'clean.jsonl')} ({len(kept)} samples)")
    return 0
