"""The rounds engine: evolve, answer, eliminate, merge — durable and deterministic.

Each seed instruction starts a lineage. In round r the lineage's current instruction (the seed, or its latest
surviving evolution) is evolved with one method drawn from (seed, lineage id, r); the evolved instruction is checked
(empty, too long, copied from the prompt, equal to its parent — the last by an LLM verdict when switched on), then
answered, and the answer is checked (empty, too long, "sorry" and short, only stop words). A pair that fails a rule is
journaled as eliminated and the lineage keeps its parent for round r+1 ("the instruction goes back to the pool").
Lineages are independent, so a worker pool walks each through all rounds without a barrier between rounds.

Durability: every finished attempt, accepted or not, is appended and flushed to DIR/round_<r>.jsonl the moment it
completes. A restarted run reads those journals and asks the LLM only for what is missing, so nothing is lost or done
twice. The merged output is ordered by (round, seed order), never by completion order: the same seed and the same model
answers give the same bytes.

Files in DIR:
  config.json       the settings that must not change across a resume (checked on restart)
  round_<r>.jsonl   journal of round r: one record per attempt with status accepted|eliminated (+ rule, detail)
  merged.jsonl      seed + accepted samples of every round, with provenance (id, root_id, round, method, parent_id,
                    model)
  summary.json      per-round counts (attempted, accepted, eliminated per rule, tokens) and totals
"""
from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
import sys
import time

from ..errors import ConfigError, DataError, UserError
from ..io import JsonlAppender, atomic_write_json, atomic_write_text, iter_json_values, read_json, read_jsonl, write_jsonl
from ..outdir import claim_out_dir
from . import rules as R
from .client import USAGE_FIELDS, LLMClient, LLMConfig, Usage
from .prompts import EvolPrompts, load_prompts


@dataclasses.dataclass
class EvolConfig:
    """What to do with the seed. Method draws are a hash of (seed, lineage id, round), so completion order and
    restarts cannot change them."""

    rounds: int = 3  # evolution rounds (the paper's data used 3; its dev pass@1 falls after that)
    seed: int = 0  # random seed of the per-(instruction, round) method draw
    equality_check: bool = True  # ask the LLM whether an evolved instruction equals its parent (WizardLM's rule 1)
    prompts: str = "wizardcoder"  # evolution template: 'wizardcoder', 'evol-teacher' or a JSON file
    rules: R.RuleConfig = dataclasses.field(default_factory=R.RuleConfig, metadata={"title": "elimination rules"})
    # the prompts `prompts` names, loaded (the Python API may change them, e.g. `cfg.templates.add_method(...)`)
    templates: EvolPrompts | None = dataclasses.field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.rounds < 1:
            raise ConfigError(f"--rounds {self.rounds}: must be at least 1.")
        self.templates = load_prompts(self.prompts)
        self.rules.copy_markers = self.templates.copy_markers


# ----------------------------------------------------------------------------------------------------------- seed


def load_seed(path: str) -> list[dict]:
    """Read seed instructions from JSON/JSONL: `instruction` (required; an Alpaca `input` is appended on a new line as
    evol-teacher does), `output` (optional; a seed without one is evolved but not merged), `id` (optional; default
    seed-<index>). A missing, binary or malformed file or record raises a DataError naming the file and line."""
    seeds, seen = [], set()
    for i, (where, rec) in enumerate(iter_json_values(path, hint="fix or remove that line of the seed file")):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}; each seed is one object.")
        instruction = rec.get("instruction")
        if not isinstance(instruction, str) or not instruction.strip():
            raise DataError(f"{where}: missing or empty `instruction` (a string); fix or remove that record.")
        if isinstance(rec.get("input"), str) and rec["input"].strip():
            instruction = instruction + "\n" + rec["input"]
        output = rec.get("output", rec.get("response"))
        if output is not None and not isinstance(output, str):
            raise DataError(f"{where}: `output` must be a string, got {type(output).__name__}.")
        sid = str(rec["id"]) if rec.get("id") is not None else f"seed-{i}"
        if sid in seen:
            raise DataError(f"{where}: duplicate id {sid!r}; ids must be unique.")
        seen.add(sid)
        seeds.append({"id": sid, "instruction": instruction, "output": output})
    if not seeds:
        raise DataError(f"{path}: no seed records; give a JSON array or JSONL of {{instruction, output}}.")
    return seeds


# ----------------------------------------------------------------------------------------------------------- engine


def sample_id(root_id: str, round_: int) -> str:
    return f"{root_id}.r{round_}"


def _merged_record(rec: dict) -> dict:
    return {k: rec.get(k) for k in ("id", "root_id", "round", "method", "parent_id", "model", "instruction", "output")}


class Evolver:
    """Runs (or resumes) an evolution into `out_dir`. `run()` returns the summary dict."""

    def __init__(self, seeds: list[dict], out_dir: str, llm: LLMConfig, cfg: EvolConfig, *,
                 progress: bool = False, seed_source: str | None = None):
        self.seeds, self.out, self.llm_cfg, self.cfg = seeds, out_dir, llm, cfg
        self.progress = progress
        self.seed_source = seed_source
        self.counts = {r: {"attempted": 0, "accepted": 0, "eliminated": {k: 0 for k in R.RULES},
                           **{k: 0 for k in USAGE_FIELDS}}
                       for r in range(1, cfg.rounds + 1)}

    # -- settings that must match on resume
    def identity(self) -> dict:
        ids = hashlib.sha256("\x00".join(s["id"] + "\x01" + s["instruction"] for s in self.seeds).encode())
        return {
            "seed_hash": ids.hexdigest()[:16],
            "n_seed": len(self.seeds),
            "seed": self.cfg.seed,
            "model": self.llm_cfg.model,
            "style": self.llm_cfg.style,
            "prompts": self.cfg.templates.fingerprint(),
            "equality_check": self.cfg.equality_check,
            "rules": {k: v for k, v in dataclasses.asdict(self.cfg.rules).items() if k != "copy_markers"},
            "sampling": {"temperature": self.llm_cfg.temperature, "top_p": self.llm_cfg.top_p,
                         "max_tokens": self.llm_cfg.max_tokens},
        }

    def _check_config(self) -> None:
        path = os.path.join(self.out, "config.json")
        ident = self.identity()
        if os.path.exists(path):
            old = read_json(path, "run config", DataError, "remove it to start over, or give another --out")
            old = old.get("identity", {}) if isinstance(old, dict) else {}
            for k, v in ident.items():
                if json.dumps(old.get(k), sort_keys=True) != json.dumps(v, sort_keys=True):
                    raise UserError(
                        f"{self.out} holds a run made with a different `{k}` ({old.get(k)!r}, now {v!r}); resume with "
                        "the same settings, or give another --out."
                    )
        atomic_write_json(path, {"identity": ident, "rounds": self.cfg.rounds, "base_url": self.llm_cfg.base_url,
                                 "seed_file": self.seed_source})

    def _journal(self, r: int) -> str:
        return os.path.join(self.out, f"round_{r}.jsonl")

    def _load_journals(self) -> dict[int, dict[str, dict]]:
        done: dict[int, dict[str, dict]] = {}
        for r in range(1, self.cfg.rounds + 1):
            done[r] = {}
            if os.path.exists(self._journal(r)):
                for i, rec in enumerate(read_jsonl(self._journal(r))):
                    if not isinstance(rec.get("root_id"), str) or rec.get("round") != r or \
                            rec.get("status") not in ("accepted", "eliminated") or \
                            rec["status"] == "eliminated" and rec.get("rule") not in R.RULES:
                        raise DataError(f"{self._journal(r)}: record {i + 1} is not a round-{r} journal record "
                                        "(root_id, round, status); the folder was edited, use a new --out.")
                    done[r].setdefault(rec["root_id"], rec)
        return done

    def _account(self, rec: dict) -> None:
        c = self.counts[rec["round"]]
        c["attempted"] += 1
        if rec["status"] == "accepted":
            c["accepted"] += 1
        else:
            c["eliminated"][rec["rule"]] += 1
        for k in USAGE_FIELDS:
            c[k] += rec.get("usage", {}).get(k, 0)

    async def _attempt(self, llm: LLMClient, root_id: str, parent: dict, r: int) -> dict:
        prompts, rules = self.cfg.templates, self.cfg.rules
        method = prompts.draw_method(self.cfg.seed, root_id, r)
        rec = {"id": sample_id(root_id, r), "root_id": root_id, "round": r, "method": method,
               "parent_id": parent["id"], "model": self.llm_cfg.model, "status": "accepted", "rule": None,
               "detail": None, "instruction": None, "output": None}
        usage = Usage()
        spend = usage.add

        def eliminate(rule_detail) -> dict:
            rec["status"], (rec["rule"], rec["detail"]) = "eliminated", rule_detail
            rec["usage"] = usage.as_dict()
            return rec

        evo = spend(await llm.complete(prompts.evolution_prompt(method, parent["instruction"])))
        instruction = evo.text.strip()
        rec["instruction"] = instruction
        fail = R.check_instruction(instruction, parent["instruction"], rules, truncated=evo.finish_reason == "length")
        if fail:
            return eliminate(fail)
        if self.cfg.equality_check and rules.on("equal"):
            verdict = spend(await llm.complete(prompts.equality_prompt(parent["instruction"], instruction),
                                               temperature=0.0, max_tokens=16))
            if R.is_equal_verdict(verdict.text):
                return eliminate(("equal", f"LLM equality check said {verdict.text.strip()[:40]!r}"))
        ans = spend(await llm.complete(instruction))
        rec["output"] = ans.text.strip()
        fail = R.check_answer(rec["output"], rules, truncated=ans.finish_reason == "length")
        if fail:
            return eliminate(fail)
        rec["usage"] = usage.as_dict()
        return rec

    def _postfix(self) -> dict:
        acc = sum(c["accepted"] for c in self.counts.values())
        post = {"ok": acc}
        for rule in R.RULES:
            n = sum(c["eliminated"][rule] for c in self.counts.values())
            if n:
                post[rule] = n
        return post

    async def _run(self) -> None:
        # Open the appenders first: that cuts a torn last line left by a kill, which the reader would reject.
        journals = {r: JsonlAppender(self._journal(r)) for r in range(1, self.cfg.rounds + 1)}
        try:
            done = self._load_journals()
        except BaseException:
            for j in journals.values():
                j.close()
            raise
        total = len(self.seeds) * self.cfg.rounds
        from tqdm import tqdm

        bar = None
        queue: asyncio.Queue = asyncio.Queue()
        for s in self.seeds:
            queue.put_nowait(s)

        async def lineage(llm: LLMClient, seed: dict) -> None:
            current = {"id": seed["id"], "instruction": seed["instruction"]}
            for r in range(1, self.cfg.rounds + 1):
                rec = done[r].get(seed["id"])
                if rec is not None and rec.get("parent_id") != current["id"]:
                    raise DataError(f"{self._journal(r)}: record {rec['id']} has parent {rec.get('parent_id')!r} but "
                                    f"the lineage is at {current['id']!r}; the journals are inconsistent, use a new "
                                    "--out.")
                if rec is None:
                    rec = await self._attempt(llm, seed["id"], current, r)
                    journals[r].write(rec)
                self._account(rec)
                bar.update(1)
                bar.set_postfix(self._postfix(), refresh=False)
                if rec["status"] == "accepted":
                    current = {"id": rec["id"], "instruction": rec["instruction"]}

        async def worker(llm: LLMClient) -> None:
            while True:
                try:
                    seed = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                await lineage(llm, seed)

        try:
            async with LLMClient(self.llm_cfg) as llm:
                pending = [s for s in self.seeds if any(s["id"] not in done[r] for r in done)]
                if pending:
                    models = await llm.check()
                    if models and self.llm_cfg.model not in models:
                        print(f"warning: {self.llm_cfg.base_url} lists models {models[:5]}, not "
                              f"{self.llm_cfg.model!r}", file=sys.stderr)
                bar = tqdm(total=total, desc="evolve", unit="pair", disable=not self.progress, file=sys.stderr,
                           mininterval=0.5, dynamic_ncols=True)
                tasks = [asyncio.ensure_future(worker(llm)) for _ in range(self.llm_cfg.concurrency)]
                try:
                    await asyncio.gather(*tasks)
                except BaseException:
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
                    raise
        finally:
            if bar is not None:
                bar.close()
            for j in journals.values():
                j.close()

    def merge(self) -> list[dict]:
        """Seed (with an output) + accepted samples of every round, ordered by (round, seed order)."""
        done = self._load_journals()
        merged = [{"id": s["id"], "root_id": s["id"], "round": 0, "method": None, "parent_id": None, "model": None,
                   "instruction": s["instruction"], "output": s["output"]}
                  for s in self.seeds if s["output"] is not None]
        for r in range(1, self.cfg.rounds + 1):
            for s in self.seeds:
                rec = done[r].get(s["id"])
                if rec is not None and rec["status"] == "accepted":
                    merged.append(_merged_record(rec))
        return merged

    def summary(self, complete: bool, seconds: float) -> dict:
        rounds = [{"round": r, **c} for r, c in self.counts.items()]
        total = {k: sum(c[k] for c in self.counts.values())
                 for k in ("attempted", "accepted", *USAGE_FIELDS)}
        total["eliminated"] = {k: sum(c["eliminated"][k] for c in self.counts.values()) for k in R.RULES}
        return {"complete": complete, "seed": len(self.seeds), "rounds": rounds, "total": total,
                "model": self.llm_cfg.model, "seconds_this_run": round(seconds, 3)}

    def run(self) -> dict:
        claim_out_dir(self.out, "evolve", legacy_file="config.json")
        self._check_config()
        t0 = time.perf_counter()
        complete = False
        try:
            asyncio.run(self._run())
            complete = True
        finally:
            summary = self.summary(complete, time.perf_counter() - t0)
            if complete:
                merged = self.merge()
                write_jsonl(os.path.join(self.out, "merged.jsonl"), merged)
                summary["merged"] = len(merged)
            atomic_write_json(os.path.join(self.out, "summary.json"), summary)
            atomic_write_text(os.path.join(self.out, "summary.md"), format_summary(summary))
        return summary


def format_summary(summary: dict) -> str:
    rules = [r for r in R.RULES if summary["total"]["eliminated"][r]] or list(R.RULES[:0])
    head = ["round", "attempted", "accepted"] + [f"elim:{r}" for r in rules] + ["prompt_tok", "completion_tok"]
    rows = []
    for c in summary["rounds"] + [{"round": "all", **summary["total"]}]:
        rows.append([str(c["round"]), str(c["attempted"]), str(c["accepted"])]
                    + [str(c["eliminated"][r]) for r in rules] + [str(c["prompt_tokens"]), str(c["completion_tokens"])])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]
    state = "complete" if summary["complete"] else "INCOMPLETE (run again to resume)"
    extra = f", {summary['merged']} merged samples" if "merged" in summary else ""
    t = summary["total"]
    llm = (f"\nLLM requests: {t['requests']} answered, {t['retries']} retried "
           f"({t.get('malformed', 0)} of them after a malformed answer)\n")
    return f"# evolve: {state}, {summary['seed']} seed instructions{extra}, model {summary['model']}\n\n" + \
        "\n".join(lines) + "\n" + llm


def evolve(seed, out_dir: str, llm: LLMConfig, cfg: EvolConfig | None = None, *, progress: bool = False,
           seed_source: str | None = None) -> dict:
    """Evolve `seed` (a JSON/JSONL path or a list of {id?, instruction, output?}) into `out_dir`; resumes a killed
    run in the same folder. `seed_source` names the file a list came from (recorded in config.json). Returns the
    summary (also written to out_dir/summary.json)."""
    cfg = cfg or EvolConfig()
    if isinstance(seed, str):
        seeds, source = load_seed(seed), seed
    else:
        seeds, source = [], seed_source
        for i, rec in enumerate(seed):
            seeds.append({"id": str(rec.get("id", f"seed-{i}")), "instruction": rec["instruction"],
                          "output": rec.get("output")})
    return Evolver(seeds, out_dir, llm, cfg, progress=progress, seed_source=source).run()
