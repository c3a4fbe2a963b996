"""Evol-Instruct for code: how fast the engine drives an OpenAI-compatible endpoint, and what hygiene costs.

engine:  evolve N seeds for 2 rounds against the scripted stub server (tests/openai_stub.py) with a fixed latency per
         request; concurrency 1 is the peer (what a plain sequential loop gets), higher concurrency is ours. The figure
         is pairs (attempts) per second; the ceiling is concurrency / (3 requests x latency). One more row runs with
         one answer in five a malformed HTTP 200 (retried with the default backoff), against the clean run.
hygiene: near-duplicate search over the public evolved rounds (../shared/data/evol_instruct_code): MinHash LSH
         (ours) against brute-force exact Jaccard over all earlier samples (the reference), same decisions checked.
"""
from __future__ import annotations

import gzip
import json
import os
import sys
import tempfile
import time

from bench.common import REPO

SHARED = os.environ.get("WIZARDCODER_SHARED_DATA", os.path.join(REPO, "..", "shared", "data"))


def _engine_rows(quick: bool) -> list[dict]:
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from openai_stub import StubLLM

    from wizardcoder.evol import EvolConfig, LLMConfig, evolve

    n, latency = (60, 0.02) if quick else (400, 0.02)
    seeds = [{"id": f"s{i}", "instruction": f"Write a function that returns the {i}-th prime.", "output": "..."}
             for i in range(n)]
    rows, base = [], None
    for conc in (1, 16, 64):
        if conc == 1 and not quick:
            seeds_c = seeds[:40]  # sequential is slow; its rate does not depend on n
        else:
            seeds_c = seeds
        with StubLLM(delay=latency) as stub, tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            s = evolve(seeds_c, d, LLMConfig(base_url=stub.base_url, model="stub-model", api_key_env=None,
                                             concurrency=conc), EvolConfig(rounds=2))
            dt = time.perf_counter() - t0
        rate = s["total"]["attempted"] / dt
        base = base or rate
        rows.append({"bench": "evol", "case": f"engine stub latency {latency * 1e3:.0f} ms, 2 rounds",
                     "impl": "sequential (peer)" if conc == 1 else f"ours, concurrency {conc}",
                     "pairs": s["total"]["attempted"], "requests": s["total"]["requests"], "seconds": round(dt, 3),
                     "pairs_per_s": round(rate, 1), "speedup": round(rate / base, 2),
                     "ceiling_pairs_per_s": round(conc / (3 * latency), 1)})
    # one answer in five a malformed HTTP 200 (cut off, HTML, wrong schema, dropped): retried on the openai client's
    # schedule (0.375-0.5 s before a first retry); the peer is the clean run at the same concurrency above
    clean = rows[1]
    with StubLLM(delay=latency, malformed_every=5) as stub, tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        s = evolve(seeds, d, LLMConfig(base_url=stub.base_url, model="stub-model", api_key_env=None, concurrency=16),
                   EvolConfig(rounds=2))
        dt = time.perf_counter() - t0
    rate = s["total"]["attempted"] / dt
    rows.append({"bench": "evol", "case": f"engine stub latency {latency * 1e3:.0f} ms, 2 rounds, 1 in 5 answers "
                 "malformed", "impl": "ours, concurrency 16", "pairs": s["total"]["attempted"],
                 "requests": s["total"]["requests"], "malformed": s["total"]["malformed"], "seconds": round(dt, 3),
                 "pairs_per_s": round(rate, 1), "speedup": round(rate / clean["pairs_per_s"], 2)})
    return rows


def _hygiene_rows(quick: bool) -> list[dict]:
    from wizardcoder.evol import hygiene as H

    d = os.path.join(SHARED, "evol_instruct_code")
    if not os.path.isdir(d):
        return []
    texts = []
    for f in ("converted_alpaca_2k.json", "evol-codealpaca-2k-1.json.gz", "evol-codealpaca-2k-2.json.gz"):
        op = gzip.open if f.endswith(".gz") else open
        texts += [r["instruction"] for r in json.load(op(os.path.join(d, f), "rt"))]
    texts = texts[:1500] if quick else texts[:3000]
    thr = 0.5  # instruction-only at 0.5 so that both methods have decisions to agree on

    t0 = time.perf_counter()
    idx = H.NearDupIndex(thr)
    lsh = {i for i, t in enumerate(texts) if idx.query_insert(str(i), t)}
    t_lsh = time.perf_counter() - t0

    t0 = time.perf_counter()
    sets, kept, brute = [], [], set()
    for i, t in enumerate(texts):
        s = {hash(g) for g in H.ngrams(H.tokens(t), 5)}
        sets.append(s)
        if s and any(len(s & sets[j]) / len(s | sets[j]) >= thr for j in kept):
            brute.add(i)
        elif s:
            kept.append(i)
    t_brute = time.perf_counter() - t0
    agree = 1 - len(lsh ^ brute) / max(1, len(lsh | brute))
    case = f"near-dup search, {len(texts)} public instructions, Jaccard>={thr}"
    return [
        {"bench": "evol", "case": case, "impl": "brute-force exact Jaccard (reference)", "seconds": round(t_brute, 3),
         "samples_per_s": round(len(texts) / t_brute, 1), "near_dups": len(brute), "speedup": 1.0},
        {"bench": "evol", "case": case, "impl": "ours, MinHash LSH + exact check", "seconds": round(t_lsh, 3),
         "samples_per_s": round(len(texts) / t_lsh, 1), "near_dups": len(lsh), "speedup": round(t_brute / t_lsh, 2),
         "agreement": round(agree, 4)},
    ]


def run(quick: bool = False) -> list[dict]:
    rows = _engine_rows(quick) + _hygiene_rows(quick)
    keys = list(dict.fromkeys(k for r in rows for k in r))  # one column set, so the table shows every figure
    return [{k: r.get(k, "") for k in keys} for r in rows]


if __name__ == "__main__" and "--measure" not in sys.argv:
    from bench.common import print_table

    print_table(run(quick="--quick" in sys.argv))


def measure_public() -> str:
    """The figures of bench/results/evol.md: the LLM-free rules and hygiene over the public evolved rounds, with the
    default settings and the variants discussed there. Returns markdown."""
    from wizardcoder.evol import filter as F
    from wizardcoder.evol import hygiene as H
    from wizardcoder.evol import rules as R

    d = os.path.join(SHARED, "evol_instruct_code")
    files = [os.path.join(d, f) for f in ("converted_alpaca_2k.json", "evol-codealpaca-2k-1.json.gz",
                                         "evol-codealpaca-2k-2.json.gz")]
    problems = (H.load_benchmark(os.path.join(SHARED, "humaneval", "HumanEval.jsonl"))
                + H.load_benchmark(os.path.join(SHARED, "mbpp", "mbpp.jsonl")))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        rep = F.filter_files(files, tmp, problems=problems)
        dt = time.perf_counter() - t0
        n = sum(f["records"] for f in rep["files"].values())
        out.append(F.format_report(rep).replace("# filter report", f"## defaults ({dt:.1f} s for {n} records)"))
        survivors = [json.loads(line) for line in open(os.path.join(tmp, "clean.jsonl"))]
    mbpp_test = {f"Mbpp/{i}" for i in range(11, 511)}
    rows = ["| variant | removed | rate | benchmark tasks hit (MBPP test split) |", "|---|---|---|---|"]
    variants = [
        ("near-dup, instruction+output, J>=0.8 (default)", H.HygieneConfig(decontaminate=False,
                                                                          measure_paraphrase=False)),
        ("near-dup, instruction only, J>=0.8", H.HygieneConfig(near_dup_field="instruction", decontaminate=False,
                                                               measure_paraphrase=False)),
        ("near-dup, instruction only, J>=0.5", H.HygieneConfig(near_dup_field="instruction", near_dup_threshold=0.5,
                                                               decontaminate=False, measure_paraphrase=False)),
        ("13-gram vs benchmark prompts (default)", H.HygieneConfig(dedup=False, measure_paraphrase=False)),
        ("10-gram vs benchmark prompts", H.HygieneConfig(dedup=False, measure_paraphrase=False, ngram=10)),
        ("13-gram prompts + 13-gram solutions", H.HygieneConfig(dedup=False, measure_paraphrase=False,
                                                               solution_ngram=13)),
        ("13-gram prompts + 20-gram solutions", H.HygieneConfig(dedup=False, measure_paraphrase=False,
                                                               solution_ngram=20)),
    ]
    allrecs = [r for f in files for r in F.load_pairs(f)]
    cfg = R.RuleConfig(copy_markers=__import__("wizardcoder.evol.prompts", fromlist=["x"]).COPY_MARKERS)
    passed = [r for r in allrecs if R.check_pair(r["instruction"], r["output"], cfg) is None]
    for name, hc in variants:
        kept, removed, rep2 = H.clean(passed, hc, problems)
        tasks = {}
        for b, c in rep2.get("contamination", {}).items():
            tasks[b] = len(c["task_ids"]), len(set(c["task_ids"]) & mbpp_test) if b == "MBPP" else None
        rows.append(f"| {name} | {len(removed)} | {len(removed) / len(passed):.4f} | "
                    + (", ".join(f"{b}: {n}" + (f" ({t} in test)" if t is not None else "") for b, (n, t) in
                                 tasks.items()) or "-") + " |")
    out.append(f"## variants over the {len(passed)} samples that pass the rules\n\n" + "\n".join(rows))
    return "\n\n".join(out) + "\n"


if __name__ == "__main__" and "--measure" in sys.argv:
    print(measure_public())
