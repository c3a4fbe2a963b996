"""Evol-Instruct for code (WizardCoder, Luo et al. 2023): evolve seed instructions with any OpenAI-compatible model,
answer them, eliminate failed evolutions, merge seed + rounds with provenance, and clean the result.

    from wizardcoder.evol import LLMConfig, EvolConfig, evolve
    summary = evolve("code_alpaca_2k.json", "runs/evol",
                     LLMConfig(base_url="http://127.0.0.1:8000/v1", model="gpt-3.5-turbo"), EvolConfig(rounds=3))

    from wizardcoder.evol import filter_files, HygieneConfig
    report = filter_files(["evol-round1.json"], "runs/clean", hyg_cfg=HygieneConfig(benchmarks=["HumanEval.jsonl"]))

Modules: prompts (template, methods, the seeded draw), rules (elimination), client (the official openai client, plus
retries of malformed answers, counting and clear errors), engine (rounds, journals, merge), hygiene (dedup,
decontamination, paraphrase measure), filter (--filter-only), cli (the verb's Config and run).
"""
from .client import LLMAuthError, LLMClient, LLMConfig, LLMError, LLMUnreachableError
from .evolution import EvolConfig, Evolver, evolve, load_seed
from .filter import filter_files
from .hygiene import HygieneConfig, clean, load_benchmark, load_benchmarks
from .prompts import CODE_METHODS, TEMPLATES, EvolPrompts, load_prompts
from .rules import RULES, RuleConfig, check_answer, check_instruction, check_pair

__all__ = [
    "CODE_METHODS", "TEMPLATES", "EvolPrompts", "load_prompts",
    "RULES", "RuleConfig", "check_answer", "check_instruction", "check_pair",
    "LLMConfig", "LLMClient", "LLMError", "LLMAuthError", "LLMUnreachableError",
    "EvolConfig", "Evolver", "evolve", "load_seed",
    "HygieneConfig", "clean", "load_benchmark", "load_benchmarks", "filter_files",
]
