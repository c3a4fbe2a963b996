"""The stages of a run and the Run that executes them.

A `Stage` is one verb resolved for this run: the section its Config is built from, the settings its hash covers
(chained with the stage before it), the product it leaves for the next stage and the hooks run around it. `Run`
resolves stages from the config file (placeholders, wiring, `out`) and executes them: skip what is done, resume what
was interrupted, remove what other settings made, record each through a `resume.Marker` in RUN/.run/<stage>.json.

A hook is a context manager factory `hook(stage)`: its code before `yield` runs before the verb (canonical.py writes
the samples it scores), its code after `yield` after it (rounds.py snapshots evolve's product; serving.py stops the
server, in a `finally`). `Run.attach` gives every stage of a verb a hook and the settings it adds to their hashes.
"""
from __future__ import annotations

import contextlib
import os
import re
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Literal

from .. import settings
from ..cli import load_config, verb_config, verb_module
from ..errors import ConfigError, UserError
from ..resume import Marker, settings_hash

STAGES = ("evolve", "pack", "train", "generate", "evaluate")
ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
# Keys that change how a stage looks, not what it makes: left out of the stage's hash.
NOT_HASHED = {"progress", "json", "llm_base_url", "overwrite", "workers", "concurrency",
              "profile", "profile_wait", "profile_warmup", "profile_active", "profile_dir"}  # profiling.ProfileConfig

Hook = Callable[["Stage"], ContextManager[None]]


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
    also_evaluate: list[str] = field(default_factory=list, metadata={"help": (
        "more benchmarks (--task names, e.g. the MultiPL-E languages) to generate for and score with the same model "
        "and [generate]/[evaluate] settings: stages generate@TASK and evaluate@TASK, one pass@k table for all")})

    def __post_init__(self):
        if self.nproc_per_node < 1:
            raise ConfigError(f"[run] nproc_per_node = {self.nproc_per_node}: must be at least 1.")
        if self.serve_timeout_s <= 0:
            raise ConfigError(f"[run] serve_timeout_s = {self.serve_timeout_s}: must be positive.")
        from ..benchmarks import get_benchmark

        for task in self.also_evaluate:
            try:
                get_benchmark(task)
            except ConfigError as e:
                raise ConfigError(f"[run] also_evaluate: {e}") from None
        if len(set(self.also_evaluate)) != len(self.also_evaluate):
            raise ConfigError(f"[run] also_evaluate = {self.also_evaluate}: names a task twice; give each once.")


@dataclass
class Stage:
    """One stage, resolved: the section its verb's Config is built from, what its hash covers, and its product."""

    name: str  # the marker's name: a stage name, or e.g. "train@r2" inside the round loop
    verb: str
    section: dict  # the resolved section (flat keys of the verb's Config)
    settings: dict  # what the hash covers: the section less NOT_HASHED, the previous stage's hash, what hooks add
    product: str  # what the stage leaves for the next one to read
    inputs: dict[str, str] = field(default_factory=dict)  # key -> path wired from an earlier stage's product
    owned: str = ""  # what a changed setting removes before the stage runs again (default: its `out`)
    hooks: list[Hook] = field(default_factory=list)  # run around the verb, in order (see the module docstring)

    @property
    def hash(self) -> str:
        return settings_hash(self.settings)


def expand(value: Any, names: dict[str, str], where: str) -> Any:
    """Replace `{run.out}`, `{assets}`, `{<stage>}` in strings (and lists of strings)."""
    if isinstance(value, list):
        return [expand(v, names, where) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(1) not in names:
            raise ConfigError(f"{where}: {{{m.group(1)}}} is a stage that does not run before this one; name an "
                              f"earlier stage ({', '.join(sorted(set(names) - {'run.out', 'assets'})) or 'none'}).")
        return names[m.group(1)]

    # only these names: other braces (evolve's prompt_format "{prompt}", a template) pass through untouched
    return re.sub(r"\{(run\.out|assets|" + "|".join(STAGES) + r")\}", sub, value)


def product_of(verb: str, section: dict) -> str:
    """What the stage leaves for the next one to read."""
    out = section["out"]
    if verb == "evolve":
        return os.path.join(out, "clean.jsonl" if section.get("hygiene", True) else "merged.jsonl")
    if verb == "train":
        return os.path.join(out, "final")
    if verb == "evaluate":
        return os.path.join(out, "summary.json")
    return out


def command_line(cls, section: dict) -> list[str]:
    """The flags that give `cls` these section values (what `settings.parse(cls, argv)` reads back), e.g. for a verb
    started as a child process."""
    known = settings.settings(cls)
    positionals: list[str] = []  # first: a list-valued flag before them would take them as its values
    flags: list[str] = []
    for key, value in section.items():
        s = known[key]
        if value is None and s.default is None:
            continue
        if s.type is bool and not s.positional:
            flags.append(s.flags[0] if value else "--no-" + s.flags[0][2:])
            continue
        values = [str(v) for v in value] if s.many else ["none" if value is None else str(value)]
        if s.positional:
            positionals += values
        elif s.many:
            flags += [s.flags[0], *values]
        else:
            flags.append(f"{s.flags[0]}={values[0]}")  # `=`: a value that starts with "-" stays a value
    return positionals + flags


def die_with_parent() -> None:
    """In a child, before exec: get SIGTERM when the parent dies (even by SIGKILL), so no server or rank outlives
    the run. Linux only; elsewhere a no-op."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def cpu_seconds() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


class Run:
    """A run folder and the config that drives it: resolves stages and executes them."""

    def __init__(self, config_path: str, sets: list[tuple[str, str, Any]] = (), out: str | None = None):
        self.source = config_path
        self.config = load_config(config_path)
        for section, key, value in sets:
            self.config.setdefault(section, {})[key] = value
        run_section = {**self.config.get("run", {}), **({"out": out} if out else {})}
        self.opts = settings.build(RunOptions, run_section, f"{config_path} [run]")
        self.out = self.opts.out
        self.state_dir = os.path.join(self.out, ".run")
        self.current: str | None = None  # the stage running now (named when the run is interrupted)
        self._hooks: dict[str, list[tuple[Hook, dict]]] = {}
        for verb, section in self.config.items():  # every section's keys and types, before anything runs
            if verb != "run":
                settings.check_section(verb_config(verb), section, f"{config_path} [{verb}]")

    def attach(self, verb: str, hook: Hook, hashed: dict) -> None:
        """Run `hook` around every stage of `verb` resolved from now on; `hashed` joins those stages' hashes."""
        self._hooks.setdefault(verb, []).append((hook, hashed))

    def names(self, products: dict[str, str]) -> dict[str, str]:
        return {"run.out": self.out, "assets": ASSETS, **products}

    def resolve(self, verb: str, products: dict[str, str], prev_hash: str, *, name: str | None = None,
                out: str | None = None, extra: dict | None = None, wire_from: dict[str, str] | None = None) -> Stage:
        """The stage's section: config values (placeholders expanded), `extra` on top (None removes a key), wiring
        and `out` for keys still unset. `wire_from` maps this stage's key -> the product it defaults to."""
        where = f"{self.source} [{verb}]"
        names = self.names(products)
        section = {k: expand(v, names, f"{where} {k}") for k, v in self.config.get(verb, {}).items()}
        for k, v in (extra or {}).items():
            if v is None:
                section.pop(k, None)
            else:
                section[k] = v
        known = settings.settings(verb_config(verb))
        inputs = {}
        for key, path in (wire_from or {}).items():
            if key in known and key not in section:
                section[key] = [path] if known[key].many else path
                inputs[key] = path
        section.setdefault("out", out or os.path.join(self.out, verb))
        owned = section["out"]
        if verb == "generate" and ("out" not in self.config.get(verb, {}) or "out" in (extra or {})):
            owned = os.path.dirname(owned)  # our own folder: the samples file and generate's resume journal beside it
        hooks = self._hooks.get(verb, [])
        hashed = {"verb": verb, "section": {k: v for k, v in section.items() if k not in NOT_HASHED},
                  "after": prev_hash, **{k: v for _, h in hooks for k, v in h.items()}}
        return Stage(name or verb, verb, section, hashed, product_of(verb, section), inputs, owned,
                     [hook for hook, _ in hooks])

    # -- markers
    def marker(self, stage: Stage) -> Marker:
        return Marker(os.path.join(self.state_dir, f"{stage.name.replace('@', '.')}.json"))

    def is_done(self, stage: Stage) -> bool:
        return self.marker(stage).matches(stage.settings) and os.path.exists(stage.product)

    def _record(self, stage: Stage, state: str, **extra) -> None:
        self.marker(stage).write(stage.settings, state=state, stage=stage.name, verb=stage.verb, out=stage.owned,
                                 product=stage.product, section=stage.section, **extra)

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
        module = verb_module(stage.verb)
        old = self.marker(stage).read()
        if old and old.get("hash") != stage.hash and isinstance(old.get("out"), str) and os.path.lexists(old["out"]):
            self._remove_stale(stage, old["out"])
        elif old and "overwrite" not in stage.section and "overwrite" in settings.settings(module.Config):
            stage.section["overwrite"] = True  # a folder this run made and did not finish (e.g. pack, not resumable)
        print(f"[run] {stage.name}: {stage.verb} -> {stage.section['out']}", flush=True)
        self.current = stage.name
        self._record(stage, "running")
        t0, c0 = time.perf_counter(), cpu_seconds()
        with contextlib.ExitStack() as around:
            for hook in stage.hooks:
                around.enter_context(hook(stage))
            cfg = settings.build(module.Config, stage.section, f"{self.source} [{stage.verb}]")
            if stage.verb == "train" and self.opts.launcher == "torchrun":
                self._torchrun(stage, module.Config)
            elif (rc := int(module.run(cfg) or 0)) != 0:
                raise UserError(f"stage {stage.name} ({stage.verb}) exited with status {rc}; see its messages above.")
        if not os.path.exists(stage.product):
            raise UserError(f"stage {stage.name} ({stage.verb}) finished without writing {stage.product}.")
        times = {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(cpu_seconds() - c0, 2)}
        self._record(stage, "done", **times)
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

    def _torchrun(self, stage: Stage, cls) -> None:
        """train under torchrun: every rank gets the resolved section as flags."""
        import subprocess

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={self.opts.nproc_per_node}",
               *self.opts.torchrun_args, "-m", "wizardcoder", stage.verb, *command_line(cls, stage.section)]
        print("[run] " + " ".join(cmd), flush=True)
        rc = subprocess.run(cmd, preexec_fn=die_with_parent).returncode
        if rc != 0:
            raise UserError(f"stage {stage.name}: torchrun exited with status {rc}; see its messages above.")
