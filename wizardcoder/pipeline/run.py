"""`wizardcoder run CONFIG`: evolve, pack, train, generate, evaluate in order from one config file.

    wizardcoder run recipe.toml                          # every stage, skipping those already complete
    wizardcoder run recipe.toml --from train --until generate --set train.lr=1e-4 --out runs/lr1e-4

The config has a section per stage whose keys are the verb's Config fields (its flags, dashes as underscores), plus
`[run]` (stages.RunOptions) and an optional `[serve]`: a `wizardcoder serve` that run starts for evolve to talk to
and stops after it (serving.py). Every section is checked against its verb's Config before anything runs; each stage
builds the verb's Config from its resolved section (`settings.build`) and calls the verb's `run(cfg)` in this
process, or runs train under torchrun when `[run] launcher = "torchrun"`.

Wiring: a key a section leaves out is filled from the stage before it:
    evolve.out/clean.jsonl -> pack.data,  pack.out -> train.data,  train.out/final -> generate.model,
    generate.out -> evaluate.samples  (and generate.task/data -> evaluate.task/data)
and `out` defaults to RUN/<stage> (generate: RUN/generate/samples.jsonl). String values may name `{run.out}`,
`{assets}` (the package's asset folder) or a stage's product, e.g. `data = ["{evolve}", "more.jsonl"]` in [pack].

Skipping and resuming: RUN/.run/<stage>.json (a resume.Marker) records the stage's state ("running", then "done")
and a hash of its resolved section chained with the hash of the stage before, so a changed setting reruns that stage
and every stage after it. A stage killed midway is started again in the same folder and resumes as the verb does
(evolve's journals, train's checkpoints, evaluate's results); a stage whose recorded hash differs has its output
removed first (only output that run itself recorded). With `[run] select_rounds = true` the paper's round-selection
loop runs instead of the plain evolve..train stages (rounds.py). `[run] also_evaluate = ["humaneval-js", ...]` adds a
generate@TASK and evaluate@TASK stage per benchmark, with the same model and settings; the report puts every
benchmark's pass@k in one table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from ..cli import CONFIG_SECTIONS
from ..errors import ConfigError, UserError
from ..io import atomic_write_json
from .canonical import canonical_stage
from .rounds import run_round_selection
from .serving import attach_server
from .stages import STAGES, Run, Stage

# key of a stage -> the earlier stage whose product it defaults to
WIRING = {"evolve": {}, "pack": {"data": "evolve"}, "train": {"data": "pack"}, "generate": {"model": "train"},
          "evaluate": {"samples": "generate"}}


@dataclass
class Config:
    """`wizardcoder run`'s command line."""

    config: str = field(metadata={"positional": True,
                                  "help": "TOML or JSON file: [run], [serve] and a section per stage"})
    start: Literal[STAGES] | None = field(default=None, metadata={"flags": ("--from",),
                                                                  "help": "first stage to run"})
    until: Literal[STAGES] | None = None  # last stage to run
    sets: list[str] = field(default_factory=list, metadata={
        "flags": ("--set",), "repeat": True,
        "help": "override config values: SECTION.KEY=VALUE (a TOML literal, else a string); repeat for more"})
    out: str | None = None  # the run folder (overrides [run] out)

    def __post_init__(self):
        if self.start and self.until and STAGES.index(self.start) > STAGES.index(self.until):
            raise ConfigError(f"--from {self.start} comes after --until {self.until}; give them in pipeline order.")


def parse_set(items: list[str]) -> list[tuple[str, str, Any]]:
    """`--set train.lr=1e-4` -> ("train", "lr", 0.0001): the value read as a TOML literal, else as a string."""
    import tomllib

    out = []
    for item in items:
        key, sep, raw = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set {item!r}: write section.key=value, e.g. --set train.lr=1e-4.")
        if section not in CONFIG_SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; valid sections are "
                              f"{', '.join(CONFIG_SECTIONS)}.")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw
        out.append((section, name, value))
    return out


def plain_stages(run: Run, products: dict[str, str], verbs: tuple[str, ...] = STAGES, prev: str = "") -> list[Stage]:
    """The stages of `verbs` that the config asks for, resolved in order (each product wired to the next)."""
    stages = []
    for verb in verbs:
        # evaluate runs without its own section when generate made samples to score
        if verb not in run.config and not (verb == "evaluate" and ("generate" in products or "generate" in run.config)):
            continue
        wire = {k: products[src] for k, src in WIRING[verb].items() if src in products}
        extra = {}
        if verb == "evaluate" and stages and stages[-1].verb == "generate":  # score what generate made, as it did
            gen = stages[-1].section
            extra = {k: gen[k] for k in ("task", "data") if k in gen and k not in run.config.get(verb, {})}
        out = os.path.join(run.out, "generate", "samples.jsonl") if verb == "generate" else None
        stage = run.resolve(verb, products, prev, out=out, extra=extra, wire_from=wire)
        stages.append(stage)
        products[verb] = stage.product
        prev = stage.hash
    return stages


def also_evaluate_stages(run: Run, stages: list[Stage], products: dict[str, str]) -> list[Stage]:
    """`[run] also_evaluate`: the run's generate and evaluate settings on more benchmarks, one pair of stages per
    task: generate@TASK (RUN/generate-TASK/samples.jsonl, from the same model) and evaluate@TASK (RUN/evaluate-TASK;
    beside the main stages' folders, not in them, so a rerun of the main stage removes nothing of theirs).
    A task's dataset is its own (the sections' `data` is the main task's), found as `evaluate --task TASK` finds it."""
    tasks = run.opts.also_evaluate
    if not tasks:
        return []
    gen = next((s for s in stages if s.name == "generate"), None)
    ev = next((s for s in stages if s.name == "evaluate"), None)
    if gen is None and (ev is None or not ev.section.get("model")):
        raise ConfigError(f"{run.source} [run] also_evaluate: nothing makes samples for the other benchmarks; add a "
                          "[generate] section (or give [evaluate] model).")
    main_task = (gen or ev).section.get("task")
    if main_task in tasks:
        raise ConfigError(f"{run.source} [run] also_evaluate names {main_task!r}, the run's own task; leave it out.")
    first = (gen or ev).settings["after"]  # the hash the main stages chain from (the model's stage)
    out = []
    for task in tasks:
        prev, samples = first, {}
        if gen is not None:
            wire = {"model": products["train"]} if "train" in products else {}
            g = run.resolve("generate", products, prev, name=f"generate@{task}", wire_from=wire, extra={
                "task": task, "data": None, "out": os.path.join(run.out, f"generate-{task}", "samples.jsonl")})
            out.append(g)
            prev, samples = g.hash, {"samples": g.product}
        out.append(run.resolve("evaluate", products, prev, name=f"evaluate@{task}", extra={
            "task": task, "data": None, "out": os.path.join(run.out, f"evaluate-{task}"), **samples}))
    return out


def _in_range(verb: str, start: str | None, until: str | None) -> bool:
    i = STAGES.index(verb)
    return (start is None or STAGES.index(start) <= i) and (until is None or i <= STAGES.index(until))


def run_pipeline(cfg: Config) -> str:
    """Run (or resume) the pipeline of `cfg.config` from `cfg.start` to `cfg.until`; return the run folder."""
    run = Run(cfg.config, parse_set(cfg.sets), cfg.out)  # checks [run] and every section first
    if not any(stage in run.config for stage in STAGES):
        raise ConfigError(f"{cfg.config} names no stage, so there is nothing to run; add at least one of the "
                          f"sections {', '.join(f'[{s}]' for s in STAGES)}.")
    attach_server(run)
    try:
        os.makedirs(run.state_dir, exist_ok=True)
        atomic_write_json(os.path.join(run.state_dir, "config.json"), run.config)
    except OSError as e:
        flag = "--out" if cfg.out else f"{cfg.config} [run] out"
        raise UserError(f"{flag} {run.out}: cannot write the run folder there ({e.strerror}); give a folder you "
                        "can write to.") from None
    try:
        _run_stages(run, cfg.start, cfg.until)
    except KeyboardInterrupt:  # main() prints this and exits 130
        where = f"during stage {run.current}" if run.current else "before any stage started"
        raise KeyboardInterrupt(f"stopped {where}; run the same command again to resume: finished stages are skipped "
                                "and the interrupted one resumes from what it saved.") from None
    return run.out


def _run_stages(run: Run, start: str | None, until: str | None) -> None:
    products: dict[str, str] = {}
    if run.opts.select_rounds:
        # evolve..train run as one loop over rounds; generate/evaluate then use the best round's checkpoint
        products.update(run_round_selection(run, may_run=_in_range("train", start, None)))
        stages = plain_stages(run, products, ("generate", "evaluate"), prev=products.pop("_hash"))
        if until in ("evolve", "pack", "train"):
            stages = []
    else:
        stages = plain_stages(run, products)
    evaluate = next((s for s in stages if s.name == "evaluate"), None)
    if run.opts.check_canonical and evaluate is not None:
        stages.append(canonical_stage(evaluate, os.path.join(run.out, "canonical")))
    stages += also_evaluate_stages(run, stages, products)
    todo = [s for s in stages if _in_range(s.verb, start, until)]
    if not todo and not run.opts.select_rounds:  # (the round loop above has run its stages itself)
        raise ConfigError(f"--from {start or STAGES[0]} --until {until or STAGES[-1]} selects none of the stages "
                          f"{run.source} runs ({', '.join(s.name for s in stages) or 'none'}); widen the range.")
    for stage in todo:
        run.execute(stage)
    if run.opts.report:
        from ..report import write_report

        print(f"[run] report: {write_report(run.out)}", flush=True)


def run(cfg: Config) -> int:
    run_pipeline(cfg)
    return 0
