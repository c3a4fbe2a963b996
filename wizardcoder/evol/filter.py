"""`--filter-only`: the elimination rules that need no LLM, then hygiene, over existing instruction data.

Input files are JSON arrays or JSONL of {instruction, output} (Alpaca `input` is appended to the instruction), such
as the public evolved rounds of nickrosh/evol-teacher or an `evolve` run's merged.jsonl. Writes to DIR:
  clean.jsonl     what survives, in input order, each with `id` and `source`
  removed.jsonl   everything dropped, with `removed_by` (a rule or a hygiene step) and `removed_detail`
  report.json     counts per file and rule, near-duplicate rate, contamination per benchmark, paraphrase findings
  report.md       the same as tables
"""
from __future__ import annotations

import collections
import os

from ..errors import DataError
from ..io import atomic_write_json, atomic_write_text, iter_json_values, write_jsonl
from ..outdir import claim_out_dir
from . import hygiene as H
from . import rules as R


def load_pairs(path: str) -> list[dict]:
    """The records of one file as {id, source, instruction, output, ...}; a record that is not an object or has a
    non-string instruction / input / output is a DataError naming the file and line."""
    base = os.path.basename(path)
    out = []
    for i, (where, rec) in enumerate(iter_json_values(path)):
        if not isinstance(rec, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(rec).__name__}; each record is one object.")
        fields = {"instruction": rec.get("instruction"), "input": rec.get("input"),
                  "output": rec.get("output", rec.get("response"))}
        for name, value in fields.items():
            if value is not None and not isinstance(value, str):
                raise DataError(f"{where}: `{name}` must be a string, got {type(value).__name__}; fix that record.")
        instruction = fields["instruction"] or ""
        if fields["input"] and fields["input"].strip():
            instruction += "\n" + fields["input"]
        out.append({**rec, "id": str(rec["id"]) if rec.get("id") is not None else f"{base}:{i}", "source": base,
                    "instruction": instruction, "output": fields["output"] or ""})
    return out


def filter_files(paths: list[str], out_dir: str, rule_cfg: R.RuleConfig | None = None,
                 hyg_cfg: H.HygieneConfig | None = None, problems: list[H.Reference] | None = None) -> dict:
    """Apply the LLM-free elimination rules and hygiene to `paths`; write clean/removed/report into `out_dir`."""
    claim_out_dir(out_dir, "evolve --filter-only", legacy_file="report.json")
    pairs_of = {path: load_pairs(path) for path in paths}  # every input read (and checked) before any work
    rule_cfg = rule_cfg or R.RuleConfig()
    hyg_cfg = hyg_cfg or H.HygieneConfig()
    survivors, removed = [], []
    per_file = {}
    for path, pairs in pairs_of.items():
        c = collections.Counter()
        for rec in pairs:
            fail = R.check_pair(rec["instruction"], rec["output"], rule_cfg)
            if fail:
                c[fail[0]] += 1
                removed.append({**rec, "removed_by": fail[0], "removed_detail": fail[1]})
            else:
                survivors.append(rec)
        per_file[os.path.basename(path)] = {"records": len(pairs), "eliminated": {k: c[k] for k in R.RULES},
                                            "passed": len(pairs) - sum(c.values())}
    kept, hyg_removed, hyg = H.clean(survivors, hyg_cfg, problems)
    removed += hyg_removed
    by_source = collections.defaultdict(collections.Counter)
    for rec in hyg_removed:
        by_source[rec["source"]][rec["removed_by"]] += 1
    for name, c in by_source.items():
        per_file[name]["hygiene_removed"] = dict(c)
    report = {"files": per_file, "rules_config": {k: v for k, v in vars(rule_cfg).items() if k != "copy_markers"},
              "hygiene": hyg, "kept": len(kept)}
    write_jsonl(os.path.join(out_dir, "clean.jsonl"), kept)
    write_jsonl(os.path.join(out_dir, "removed.jsonl"), removed)
    atomic_write_json(os.path.join(out_dir, "report.json"), report)
    atomic_write_text(os.path.join(out_dir, "report.md"), format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = ["# filter report", "", "## elimination rules (no LLM) per file", "",
             "| file | records | " + " | ".join(R.RULES) + " | passed | hygiene removed |",
             "|---|---|" + "---|" * len(R.RULES) + "---|---|"]
    for name, f in report["files"].items():
        lines.append(f"| {name} | {f['records']} | " + " | ".join(str(f["eliminated"][r]) for r in R.RULES)
                     + f" | {f['passed']} | {f.get('hygiene_removed', {})} |")
    h = report["hygiene"]
    lines += ["", "## hygiene", "", f"input {h['input']}, kept {h['kept']}, removed {h['removed']}",
              f"exact-duplicate rate {h['exact_dup_rate']:.4f}, near-duplicate rate {h['near_dup_rate']:.4f}"]
    for bench, c in h.get("contamination", {}).items():
        lines.append(f"- contaminated by {bench}: {sum(c['samples_by_field'].values())} samples "
                     f"({c['samples_by_field']}), {c['tasks_hit']} tasks: {', '.join(c['task_ids'][:30])}")
    p = h.get("paraphrase")
    if p:
        lines += ["", f"## paraphrase measurement (threshold {p['threshold']})", "", p["method"], "",
                  f"flagged {p['flagged']} samples ({p['flagged_by_benchmark']}; "
                  f"{p.get('flagged_tasks', '?')} distinct tasks), by source {p.get('flagged_by_source', {})}", "",
                  f"histogram of best-match Jaccard: {p['histogram']}", "",
                  "| id | task | jaccard | containment | instruction | benchmark prompt |", "|---|---|---|---|---|---|"]
        esc = lambda s: s.replace("|", "\\|")  # noqa: E731
        for m in p["top"]:
            lines.append(f"| {m['id']} | {m['task_id']} | {m['jaccard']} | {m['containment']} | "
                         f"{esc(m['instruction'])} | {esc(m['benchmark_prompt'])} |")
        c = p.get("containment")
        if c:
            lines += ["", f"### containment >= {c['threshold']}: {c['flagged']} samples ({c['flagged_by_benchmark']}; "
                          f"{c['flagged_tasks']} distinct tasks), by source {c['flagged_by_source']}", "",
                      "| id | task | containment | instruction | benchmark prompt |", "|---|---|---|---|---|"]
            for m in c["top"]:
                lines.append(f"| {m['id']} | {m['task_id']} | {m['containment']} | {esc(m['instruction'])} | "
                             f"{esc(m['benchmark_prompt'])} |")
    return "\n".join(lines) + "\n"
