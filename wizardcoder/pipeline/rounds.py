"""The paper's round selection ("evol stop"): after every evolution round, train on seed + rounds 1..r, score on a
dev set that is not the test set, and stop once dev pass@1 falls; the best round's checkpoint goes on to the test.

Per round r (each a stage with its own marker, so a killed loop resumes where it was):
    evolve@r   evolve with rounds = r into the shared evolve folder (the engine resumes: only round r is new),
               then its product is copied to RUN/rounds/r<r>/evolved.jsonl (seed + rounds 1..r)
    pack@r     RUN/rounds/r<r>/pack       from that snapshot
    train@r    RUN/rounds/r<r>/train      from the base model, as the paper trains each round's model
    generate@r RUN/rounds/r<r>/dev/samples.jsonl on [run] dev_task / dev_data / dev_limit
    evaluate@r RUN/rounds/r<r>/dev_eval   -> pass@1
RUN/rounds/selection.json holds pass@1 per round, the best round and why the loop stopped.
"""
from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

from .. import settings
from ..benchmarks import get_benchmark
from ..cli import verb_config
from ..errors import ConfigError, UserError
from ..io import atomic_open, atomic_write_json, read_json
from .stages import Run, Stage


def _dev_settings(run: Run) -> dict:
    o = run.opts
    test_task = run.config.get("generate", {}).get("task") or run.config.get("evaluate", {}).get("task")
    test_data = run.config.get("generate", {}).get("data") or run.config.get("evaluate", {}).get("data")
    if o.dev_task == test_task and (o.dev_data is None or o.dev_data == test_data):
        raise ConfigError(f"{run.source} [run]: dev_task {o.dev_task!r} with dev_data {o.dev_data!r} is the test set; "
                          "give a held-out dev_data file or another dev_task.")
    return {"task": o.dev_task, "data": o.dev_data, "limit": o.dev_limit}


def _snapshot(src: str):
    """A hook: after evolve, copy its product (rewritten by every later round) to this round's own file, atomically."""
    @contextlib.contextmanager
    def snapshot(stage: Stage) -> Iterator[None]:
        yield
        with open(src, "rb") as fi, atomic_open(stage.product, "wb") as fo:
            shutil.copyfileobj(fi, fo)
    return snapshot


def pass_at_1(summary_path: str) -> float:
    s = read_json(summary_path, "evaluation summary")
    return get_benchmark(s["task"]).headline(s)[1]


def run_round_selection(run: Run, may_run: bool = True) -> dict[str, str]:
    """Run (or resume) the loop; return the products of the best round ({"evolve", "pack", "train"}) plus
    "_hash" (the best train stage's hash, which chains into the test stages)."""
    sel_path = os.path.join(run.out, "rounds", "selection.json")
    dev = _dev_settings(run)
    max_rounds = (run.config.get("evolve", {}).get("rounds")
                  or settings.settings(verb_config("evolve"))["rounds"].default)
    evolve_out = run.config.get("evolve", {}).get("out") or os.path.join(run.out, "evolve")
    rounds, prev, best = [], "", None
    for r in range(1, max_rounds + 1):
        rdir = os.path.join(run.out, "rounds", f"r{r}")
        products: dict[str, str] = {}
        ev = run.resolve("evolve", products, prev, name=f"evolve@r{r}", extra={"rounds": r}, out=evolve_out)
        snapshot = os.path.join(rdir, "evolved.jsonl")
        ev.hooks.append(_snapshot(ev.product))
        ev.product = snapshot
        if r > 1:
            ev.owned = snapshot  # a changed round r must not remove the folder rounds < r live in
        products["evolve"] = snapshot
        # per-round stages write under rdir even when the config names an `out` (that is the test pipeline's)
        pk = run.resolve("pack", products, ev.hash, name=f"pack@r{r}", extra={"out": os.path.join(rdir, "pack")},
                         wire_from={"data": snapshot})
        products["pack"] = pk.product
        tr = run.resolve("train", products, pk.hash, name=f"train@r{r}", extra={"out": os.path.join(rdir, "train")},
                         wire_from={"data": pk.product})
        products["train"] = tr.product
        scoring = {"task": dev["task"], "data": dev["data"], "k": [1], "out": os.path.join(rdir, "dev_eval")}
        ge = run.resolve("generate", products, tr.hash, name=f"generate@r{r}",
                         extra={**dev, "out": os.path.join(rdir, "dev", "samples.jsonl")},
                         wire_from={"model": tr.product})
        products["generate"] = ge.product
        ex = run.resolve("evaluate", products, ge.hash, name=f"evaluate@r{r}", extra=scoring,
                         wire_from={"samples": ge.product})
        for stage in (ev, pk, tr, ge, ex):
            if not may_run and not run.is_done(stage):
                raise UserError(f"round {r}'s {stage.verb} is not complete, so there is no selected round to go on "
                                "from; run without --from (or with --from evolve/pack/train) first.")
            run.execute(stage)
        score = pass_at_1(ex.product)
        rounds.append({"round": r, "pass@1": score, "dev_task": dev["task"], "checkpoint": tr.product,
                       "summary": ex.product})
        print(f"[run] round {r}: dev {dev['task']} pass@1 = {score:.4f}", flush=True)
        if best is None or score > best[0]["pass@1"]:
            best = (rounds[-1], {"evolve": snapshot, "pack": pk.product, "train": tr.product}, tr.hash)
        prev = ev.hash
        if r > 1 and score < rounds[-2]["pass@1"]:
            stopped = f"dev pass@1 fell at round {r} ({rounds[-2]['pass@1']:.4f} -> {score:.4f})"
            break
    else:
        stopped = f"reached the last round ({max_rounds})"
    atomic_write_json(sel_path, {"dev": dev, "rounds": rounds, "best": best[0]["round"], "stopped": stopped})
    print(f"[run] round selection: best round {best[0]['round']} (dev pass@1 {best[0]['pass@1']:.4f}); {stopped}",
          flush=True)
    return {**best[1], "_hash": best[2]}
