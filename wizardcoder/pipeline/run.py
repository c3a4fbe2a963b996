"""`wizardcoder run CONFIG`: evolve, pack, train, generate, evaluate in order from one config file.

    wizardcoder run recipe.toml                          # every stage, skipping those already complete
    wizardcoder run recipe.toml --from train --until generate --set train.lr=1e-4 --out runs/lr1e-4

The config has a section per stage with the verb's own field names (its argparse dests), plus `[run]` (RunOptions
below) and an optional `[serve]`: a `wizardcoder serve` that run starts for evolve to talk to and stops after it.
Each stage runs through the verb's own parser and `run(args)` (cli.parse_verb_args: the path the CLI takes), in this
process, or train under torchrun when `[run] launcher = "torchrun"`.

Wiring: a key a section leaves out is filled from the stage before it:
    evolve.out/clean.jsonl -> pack.data,  pack.out -> train.data,  train.out/final -> generate.model,
    generate.out -> evaluate.samples  (and generate.task/data -> evaluate.task/data)
and `out` defaults to RUN/<stage> (generate: RUN/generate/samples.jsonl). String values may name `{run.out}`,
`{assets}` (the package's asset folder) or a stage's product, e.g. `data = ["{evolve}", "more.jsonl"]` in [pack].

Skipping and resuming: RUN/.run/<stage>.json records the stage's state ("running", then "done") and a hash of its
resolved section chained with the hash of the stage before, so a changed setting reruns that stage and every stage
after it. A stage killed midway is started again in the same folder and resumes as the verb does (evolve's journals,
train's checkpoints, evaluate's results); a stage whose recorded hash differs has its output removed first (only
output that run itself recorded). With `[run] select_rounds = true` the paper's round-selection loop runs instead of
the plain evolve..train stages (see rounds.py).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from ..cli import CONFIG_SECTIONS, apply_config, load_config, parse_verb_args, verb_available, verb_parser
from ..errors import ConfigError, UserError
from ..io import atomic_write_json
from .serving import die_with_parent, serve_for_evolve

STAGES = ("evolve", "pack", "train", "generate", "evaluate")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
# Keys that change how a stage looks, not what it makes: left out of the stage's hash.
_NOT_HASHED = {"no_progress", "progress", "quiet", "llm_base_url", "overwrite", "workers", "concurrency",
               "profile", "profile_wait", "profile_warmup", "profile_active", "profile_dir"}  # profiling.ProfileConfig


@dataclass
class RunOptions:
    """The `[run]` section."""

    out: str = "runs/run"  # folder of the run: one subfolder per stage, .run/ markers, report.md
    launcher: Literal["inprocess", "torchrun"] = "inprocess"  # how the train stage runs
    nproc_per_node: int = 1  # torchrun --nproc_per_node
    torchrun_args: list[str] = field(default_factory=list)  # more torchrun flags, e.g. ["--nnodes=2", "--node-rank=0"]
    serve_timeout_s: float = 600.0  # longest wait for the [serve] server to answer before giving up
    check_canonical: bool = False  # also score the benchmark's canonical solutions (a check of the evaluator)
    select_rounds: bool = False  # train and score on a dev set after every evolution round; keep the best round
    dev_task: str = "mbpp"  # the dev benchmark of select_rounds (never the test task)
    dev_data: str | None = None  # the dev set's file (upstream format of dev_task); default: the task's own source
    dev_limit: int | None = None  # only the first N dev problems
    report: bool = True  # write report.md and plots at the end

    def __post_init__(self):
        if self.nproc_per_node < 1:
            raise ConfigError(f"[run] nproc_per_node {self.nproc_per_node}: must be at least 1.")
        if self.launcher not in ("inprocess", "torchrun"):
            raise ConfigError(f"[run] launcher {self.launcher!r}: use \"inprocess\" or \"torchrun\".")


_OF_TYPE = {bool: lambda v: isinstance(v, bool), int: lambda v: isinstance(v, int) and not isinstance(v, bool),
            float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), str: lambda v: isinstance(v, str)}


def run_options(section: dict, where: str) -> RunOptions:
    """The [run] section as RunOptions: unknown keys and values of the wrong type are one sentence each."""
    import typing

    hints = typing.get_type_hints(RunOptions)
    for key, value in section.items():
        if key not in hints:
            raise ConfigError(f"{where}: unknown field {key!r}; valid fields are {', '.join(sorted(hints))}.")
        tp = hints[key]
        allowed = [t for t in typing.get_args(tp) if t is not type(None)] if typing.get_origin(tp) is not None else [tp]
        if typing.get_origin(tp) is list:
            good = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif typing.get_origin(tp) is Literal:
            good = value in typing.get_args(tp)
        else:
            good = (value is None and type(None) in typing.get_args(tp)) or any(_OF_TYPE[t](value) for t in allowed)
        if not good:
            expected = (" or ".join(map(repr, typing.get_args(tp))) if typing.get_origin(tp) is Literal
                        else getattr(tp, "__name__", str(tp)))
            raise ConfigError(f"{where}: {key} = {value!r} is not valid; expected {expected}.")
    return RunOptions(**section)


# ------------------------------------------------------------------------------------------------- config handling


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


def _expand(value: Any, names: dict[str, str], where: str) -> Any:
    """Replace `{run.out}`, `{assets}`, `{<stage>}` in strings (and lists of strings)."""
    if isinstance(value, list):
        return [_expand(v, names, where) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1) not in names:
            raise ConfigError(f"{where}: {{{m.group(1)}}} is a stage that does not run before this one; name an "
                              f"earlier stage ({', '.join(sorted(set(names) - {'run.out', 'assets'})) or 'none'}).")
        return names[m.group(1)]

    # only these names: other braces (evolve's prompt_format "{prompt}", a template) pass through untouched
    return re.sub(r"\{(run\.out|assets|" + "|".join(STAGES) + r")\}", sub, value)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def product_of(stage: str, section: dict) -> str:
    """What the stage leaves for the next one to read."""
    out = section["out"]
    if stage == "evolve":
        return os.path.join(out, "merged.jsonl" if section.get("no_hygiene") else "clean.jsonl")
    if stage == "train":
        return os.path.join(out, "final")
    if stage == "evaluate":
        return os.path.join(out, "summary.json")
    return out


@dataclass
class Stage:
    """One stage, resolved: the section its verb parses, the hash that says whether it is done, and its product."""

    name: str  # the marker's name: a stage name, or e.g. "train@r2" inside the round loop
    verb: str
    section: dict
    hash: str
    product: str
    inputs: dict[str, str] = field(default_factory=dict)  # key -> path wired from an earlier stage's product
    owned: str = ""  # what a changed setting removes before the stage runs again (default: its `out`)
    prepare: Callable[["Stage"], None] | None = None  # called before the verb runs (e.g. writes its input)
    finish: Callable[["Stage"], None] | None = None  # called after it (e.g. snapshots its product)


class Run:
    """A run folder and the config that drives it."""

    def __init__(self, config: dict[str, dict], source: str, out: str | None = None):
        self.source = source
        self.config = {k: dict(v) for k, v in config.items()}
        self.opts = run_options(self.config.get("run", {}), f"{source} [run]")
        if out:
            self.opts.out = out
        self.out = self.opts.out
        self.state_dir = os.path.join(self.out, ".run")
        self.stage_times: dict[str, dict] = {}
        self.current: str | None = None  # the stage running now (named when the run is interrupted)
        self._validate()

    # -- checks before anything runs: every section parses through its verb
    def _validate(self) -> None:
        for verb in ("serve", *STAGES):
            if verb not in self.config or verb == "generate" and not verb_available(verb):
                continue  # without a generate verb, evaluate generates (generation_in_evaluate)
            if not verb_available(verb):
                raise ConfigError(f"{self.source}: section [{verb}] is for the `{verb}` verb, which this installation "
                                  "lacks; remove the section.")
            _, parser = verb_parser(verb)
            apply_config(parser, self.config[verb], f"{self.source} [{verb}]")
        if "serve" in self.config and self.config.get("evolve", {}).get("llm_base_url"):
            raise ConfigError(f"{self.source}: [evolve] llm_base_url and a [serve] section both name evolve's LLM; "
                              "keep one.")

    def names(self, products: dict[str, str]) -> dict[str, str]:
        return {"run.out": self.out, "assets": ASSETS, **products}

    def resolve(self, verb: str, products: dict[str, str], prev_hash: str, *, name: str | None = None,
                out: str | None = None, extra: dict | None = None, wire_from: dict[str, str] | None = None) -> Stage:
        """The stage's section: config values (placeholders expanded), `extra` on top, wiring and `out` for keys
        still unset. `wire_from` maps this stage's key -> the product it defaults to."""
        where = f"{self.source} [{verb}]"
        names = self.names(products)
        section = {k: _expand(v, names, f"{where} {k}") for k, v in self.config.get(verb, {}).items()}
        for k, v in (extra or {}).items():
            if v is None:
                section.pop(k, None)
            else:
                section[k] = v
        _, parser = verb_parser(verb)
        keys = {a.dest for a in parser._actions}
        inputs = {}
        for key, path in (wire_from or {}).items():
            if key in keys and key not in section:
                many = next(a for a in parser._actions if a.dest == key).nargs in ("+", "*")
                section[key] = [path] if many else path
                inputs[key] = path
        if "out" not in section:
            section["out"] = out or os.path.join(self.out, verb)
        hashed = {k: v for k, v in section.items() if k not in _NOT_HASHED}
        if verb == "evolve" and "serve" in self.config:
            hashed["serve"] = {k: v for k, v in self.config["serve"].items() if k not in ("host", "port")}
        owned = section["out"]
        if verb == "generate" and ("out" not in self.config.get(verb, {}) or "out" in (extra or {})):
            owned = os.path.dirname(owned)  # our own folder: the samples file and generate's resume journal beside it
        return Stage(name or verb, verb, section, _hash([verb, hashed, prev_hash]), product_of(verb, section), inputs,
                     owned=owned)

    # -- markers
    def _marker_path(self, name: str) -> str:
        return os.path.join(self.state_dir, f"{name.replace('@', '.')}.json")

    def marker(self, name: str) -> dict | None:
        try:
            with open(self._marker_path(name), encoding="utf-8") as f:
                return json.load(f)
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def _write_marker(self, stage: Stage, state: str, **extra) -> None:
        atomic_write_json(self._marker_path(stage.name), {"stage": stage.name, "verb": stage.verb, "state": state,
                                                          "hash": stage.hash, "out": stage.owned or stage.section["out"],
                                                          "product": stage.product, "section": stage.section,
                                                          **extra})

    def is_done(self, stage: Stage) -> bool:
        m = self.marker(stage.name)
        return bool(m and m["state"] == "done" and m["hash"] == stage.hash and os.path.exists(stage.product))

    def check_inputs(self, stage: Stage) -> None:
        for key, path in stage.inputs.items():
            if not os.path.exists(path):
                raise UserError(f"{stage.name} reads {path} ([{stage.verb}] {key}, an earlier stage's output), which "
                                f"does not exist; run the earlier stages first (an earlier --from) or set {stage.verb}."
                                f"{key} in {self.source}.")

    def execute(self, stage: Stage) -> None:
        """Run one stage unless it is already complete; record it."""
        if self.is_done(stage):
            print(f"[run] {stage.name}: complete, skipped ({stage.product})", flush=True)
            return
        self.check_inputs(stage)
        old = self.marker(stage.name)
        if old and old["hash"] != stage.hash and os.path.lexists(old["out"]):
            self._remove_stale(stage, old["out"])
        elif old and "overwrite" not in stage.section and _has_key(stage.verb, "overwrite"):
            stage.section["overwrite"] = True  # a folder this run made and did not finish (e.g. pack, not resumable)
        print(f"[run] {stage.name}: {stage.verb} -> {stage.section['out']}", flush=True)
        self.current = stage.name
        self._write_marker(stage, "running")
        t0, c0 = time.perf_counter(), cpu_seconds()
        if stage.prepare is not None:
            stage.prepare(stage)
        if stage.verb == "train" and self.opts.launcher == "torchrun":
            self._torchrun(stage)
        else:
            with serve_for_evolve(self, stage):  # a no-op unless this is evolve and the config has [serve]
                module, args = parse_verb_args(stage.verb, [], stage.section, f"{self.source} [{stage.verb}]")
                rc = int(module.run(args) or 0)
            if rc != 0:
                raise UserError(f"stage {stage.name} ({stage.verb}) exited with status {rc}; see its messages above.")
        if stage.finish is not None:
            stage.finish(stage)
        if not os.path.exists(stage.product):
            raise UserError(f"stage {stage.name} ({stage.verb}) finished without writing {stage.product}.")
        times = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu_seconds() - c0, 2)}
        self._write_marker(stage, "done", **times)
        print(f"[run] {stage.name}: done in {times['wall_s']}s wall, {times['cpu_s']}s CPU", flush=True)

    def _remove_stale(self, stage: Stage, path: str) -> None:
        """Remove what an earlier run of this stage made with other settings; never the run folder or above it."""
        target = os.path.realpath(path)
        for keep in (os.path.realpath(self.out), os.path.realpath(os.getcwd())):
            if keep == target or keep.startswith(target + os.sep):
                raise ConfigError(f"{stage.name}'s settings changed, but its output {path} holds {keep}, so it is "
                                  f"not removed; give [{stage.verb}] out a folder of its own.")
        print(f"[run] {stage.name}: settings changed since {path} was made; removing it", flush=True)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)

    def _torchrun(self, stage: Stage) -> None:
        """train under torchrun: the resolved section goes to every rank as a `--config` file."""
        import subprocess

        cfg = os.path.join(self.state_dir, f"{stage.name.replace('@', '.')}.config.json")
        atomic_write_json(cfg, {"train": stage.section})
        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.opts.nproc_per_node}",
               *self.opts.torchrun_args, "-m", "wizardcoder", "train", "--config", cfg]
        print("[run] " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, preexec_fn=die_with_parent).returncode
        if rc != 0:
            raise UserError(f"stage {stage.name}: torchrun exited with status {rc}; see its messages above.")

    # -- the whole pipeline
    def plain_stages(self, products: dict[str, str], verbs: tuple[str, ...] = STAGES, prev: str = "") -> list[Stage]:
        """The stages of `verbs` that the config asks for, resolved in order (each product wired to the next)."""
        stages = []
        wiring = {"evolve": {}, "pack": {"data": "evolve"}, "train": {"data": "pack"},
                  "generate": {"model": "train"}, "evaluate": {"samples": "generate"}}
        for verb in verbs:
            # evaluate runs without its own section when generate made samples to score
            wanted = verb in self.config or verb == "evaluate" and ("generate" in products or "generate" in self.config)
            if not wanted or verb == "generate" and not verb_available("generate"):
                continue
            wire = {k: products[src] for k, src in wiring[verb].items() if src in products}
            extra = {}
            if verb == "evaluate":
                gen = self.config.get("generate", {})
                extra = {k: gen[k] for k in ("task", "data") if k in gen and k not in self.config.get(verb, {})}
                if "generate" in self.config and not verb_available("generate"):
                    extra, wire = self.generation_in_evaluate(products), {}
            out = os.path.join(self.out, "generate", "samples.jsonl") if verb == "generate" else None
            stage = self.resolve(verb, products, prev, out=out, extra=extra, wire_from=wire)
            stages.append(stage)
            products[verb] = stage.product
            prev = stage.hash
        return stages

    def generation_in_evaluate(self, products: dict[str, str], overrides: dict | None = None) -> dict:
        """Without a `generate` verb, evaluate generates itself (`evaluate --model`): the [generate] keys its parser
        knows, the model wired from train."""
        _, parser = verb_parser("evaluate")
        keys = {a.dest for a in parser._actions}
        gen = {**self.config.get("generate", {}), **(overrides or {})}
        if "model" not in keys:
            raise UserError("this installation has neither a `generate` verb nor `evaluate --model`; the run cannot "
                            "make samples to score.")
        print("[run] note: no `generate` verb here; evaluate generates the samples itself (evaluate --model)",
              flush=True)
        extra = {k: v for k, v in gen.items() if k in keys and k != "out" and k not in self.config.get("evaluate", {})}
        if "train" in products and "model" not in gen:
            extra["model"] = products["train"]
        return extra


def _has_key(verb: str, key: str) -> bool:
    _, parser = verb_parser(verb)
    return any(a.dest == key for a in parser._actions)


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def _in_range(verb: str, start: str | None, until: str | None) -> bool:
    i = STAGES.index(verb)
    return (start is None or STAGES.index(start) <= i) and (until is None or i <= STAGES.index(until))


def run_pipeline(config_path: str, *, start: str | None = None, until: str | None = None, sets: list[str] = (),
                 out: str | None = None, overrides: list[tuple[str, str, Any]] = ()) -> str:
    """Run (or resume) the pipeline of `config_path` from `start` to `until`; returns the run folder. `sets` are
    --set strings, `overrides` (section, key, value) triples applied before them."""
    config = load_config(config_path)
    for section, key, value in [*overrides, *parse_set(list(sets))]:
        config.setdefault(section, {})[key] = value
    if start and until and STAGES.index(start) > STAGES.index(until):
        raise ConfigError(f"--from {start} comes after --until {until}; give them in pipeline order.")
    run = Run(config, config_path, out)  # checks [run] and every section first
    if not any(stage in config for stage in STAGES):
        raise ConfigError(f"{config_path} names no stage, so there is nothing to run; add at least one of the "
                          f"sections {', '.join(f'[{s}]' for s in STAGES)}.")
    try:
        os.makedirs(run.state_dir, exist_ok=True)
        atomic_write_json(os.path.join(run.state_dir, "config.json"), run.config)
    except OSError as e:
        flag = "--out" if out else f"{config_path} [run] out"
        raise UserError(f"{flag} {run.out}: cannot write the run folder there ({e.strerror}); give a folder you "
                        "can write to.") from None
    try:
        _run_stages(run, start, until)
    except KeyboardInterrupt:  # main() prints this and exits 130
        where = f"during stage {run.current}" if run.current else "before any stage started"
        raise KeyboardInterrupt(f"stopped {where}; run the same command again to resume: finished stages are skipped "
                                "and the interrupted one resumes from what it saved.") from None
    return run.out


def _run_stages(run: Run, start: str | None, until: str | None) -> None:
    from .canonical import canonical_stage
    from .rounds import run_round_selection

    products: dict[str, str] = {}
    if run.opts.select_rounds:
        # evolve..train run as one loop over rounds; generate/evaluate then use the best round's checkpoint
        products.update(run_round_selection(run, may_run=_in_range("train", start, None)))
        stages = run.plain_stages(products, ("generate", "evaluate"), prev=products.pop("_hash"))
        if until in ("evolve", "pack", "train"):
            stages = []
    else:
        stages = run.plain_stages(products)
    stages += canonical_stage(run, stages)
    todo = [s for s in stages if _in_range(s.verb, start, until)]
    if not todo and not run.opts.select_rounds:  # (the round loop above has run its stages itself)
        raise ConfigError(f"--from {start or STAGES[0]} --until {until or STAGES[-1]} selects none of the stages "
                          f"{run.source} runs ({', '.join(s.name for s in stages) or 'none'}); widen the range.")
    for stage in todo:
        run.execute(stage)
    if run.opts.report:
        from ..report import write_report

        print(f"[run] report: {write_report(run.out)}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", metavar="CONFIG", help="TOML or JSON file: [run], [serve] and a section per stage")
    p.add_argument("--from", dest="start", choices=STAGES, default=None, help="first stage to run (default evolve)")
    p.add_argument("--until", choices=STAGES, default=None, help="last stage to run (default evaluate)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value (a TOML literal, else a string); repeatable")
    p.add_argument("--out", default=None, help="the run folder (overrides [run] out)")


def run(args: argparse.Namespace) -> int:
    run_pipeline(args.config, start=args.start, until=args.until, sets=args.sets, out=args.out)
    return 0
