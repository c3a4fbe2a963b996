"""What a benchmark is: one object per evaluation task that knows everything task-specific.

    bench = get_benchmark("humaneval")
    problems = bench.load()                     # {task_id: Problem}, from --data, a package, a cache or the hub
    text = bench.prompt(problems["HumanEval/0"])  # WizardCoder's instruction prompt; bench.stop: its stop words
    code = bench.solution(problem, {"response": answer})   # a sample -> the program it stands for
    jobs = bench.sample_work(path, problems, [(0, "HumanEval/0", code)]).jobs   # what the sandbox runs

The scorer (`scoring.py`) never asks which task it is scoring: every difference between tasks is an attribute or a
method here. A benchmark only describes sandbox jobs; the scorer runs them.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Iterable

from ..data.templates import ALPACA
from ..errors import ConfigError, DataError
from ..io import read_records
from ..eval import postprocessing
from ..eval.jobs import Job, Result
from .sources import Source, locate

PROMPT_STYLES = ("wizardcoder", "plain")  # instruction prompt (answers post-processed) / code completion
SAMPLE_FIELDS = ("solution", "completion", "response")  # a sample's code: the first of these it has
# Codex / bigcode-evaluation-harness stops for plain function completion
PLAIN_STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
INSTRUCTION = "Create a Python script for this problem:\n"  # WizardCoder's humaneval_gen.py / mbpp_gen.py


@dataclasses.dataclass
class Problem:
    task_id: str
    prompt: str  # the code prompt a completion continues ("" for MBPP, whose prompt is prose)
    entry_point: str | None
    canonical: str  # a whole program that solves it
    text: str = ""  # the natural-language statement (MBPP), for building instruction prompts
    tests: list = dataclasses.field(default_factory=list)  # MBPP's asserts (shown in prompts)
    raw: dict = dataclasses.field(default_factory=dict, repr=False)  # the upstream record


@dataclasses.dataclass
class Work:
    """What the sandbox must run: the data jobs refer to by `task_key` (a dict, or a callable that loads it when a
    worker first needs it) and the jobs themselves."""

    tasks: dict[str, Any]
    jobs: list[Job]


class Benchmark:
    """A task's dataset, prompts, post-processing and sandbox jobs. Subclasses set the class attributes and
    override `problem` (one upstream record -> Problem) and `program` (or the plus methods)."""

    name: ClassVar[str]  # the --task spelling
    title: ClassVar[str]  # for messages
    source: ClassVar[Source]
    required: ClassVar[tuple[str, ...]]  # fields every upstream record has
    timeout: ClassVar[float | None] = 3.0  # default CPU seconds per program (None: per problem, see PlusBenchmark)
    preload: ClassVar[tuple[str, ...]] = ()  # modules the sandbox worker imports up front (checks or contexts use them)
    read_paths: ClassVar[tuple[str, ...]] = ()  # folders outside the sandbox's allowlist its programs read (compilers)
    parts: ClassVar[tuple[str, ...]] = ("script",)  # the jobs of one sample; the sample passes when all pass
    group_name: ClassVar[str] = "group"  # what `group` names (DS-1000: "library"), for reports
    id_prefix: ClassVar[str] = ""  # "HumanEval/": bare numbers get it; "": ids lose any "Name/" prefix
    continues_prompt: ClassVar[bool] = True  # a completion is appended to the code prompt
    fence_close: ClassVar[str] = "```"  # WizardCoder's closing fence for this task's answers
    cuts: ClassVar[tuple[str, ...]] = (postprocessing.MAIN_GUARD, "# Example usage")  # answers end before these

    def __repr__(self) -> str:
        return f"<benchmark {self.name}>"

    # ------------------------------------------------------------------------------------------- data

    @classmethod
    def recognizes(cls, record: dict) -> bool:
        """`record` (a dataset file's first) is in this task's upstream format: it has the task's fields and, where
        the task has one, its task id prefix."""
        return all(f in record for f in cls.required) and str(record.get("task_id", "")).startswith(cls.id_prefix)

    @classmethod
    def recognizes_folder(cls, path: str) -> bool:
        """The folder at `path` is this task's dataset (a release of one folder a problem)."""
        return False

    def locate(self, data: str | None = None) -> str:
        """The dataset file: `data`, else a package, a local cache or the network (see sources.py)."""
        return locate(self.source, self.title, data)

    def load(self, data: str | None = None) -> dict[str, Problem]:
        """{task_id: Problem} in dataset order, from `data` or the default places."""
        return self.read(self.locate(data))

    def read(self, path: str) -> dict[str, Problem]:
        out: dict[str, Problem] = {}
        for i, rec in enumerate(read_records(path)):
            missing = [f for f in self.required if f not in rec]
            if missing:
                raise DataError(f"{path}: record {i + 1} lacks {', '.join(missing)}; is this the {self.title} "
                                "dataset file?")
            p = self.problem(rec, i)
            if p is not None:
                out[p.task_id] = p
        if not out:
            raise DataError(f"{path}: no {self.title} problems found; is this the right file for --task {self.name}?")
        return out

    def problem(self, rec: dict, index: int) -> Problem | None:
        """One upstream record as a Problem (None: not part of the benchmark)."""
        return Problem(rec["task_id"], rec["prompt"], rec["entry_point"], rec["prompt"] + rec["canonical_solution"],
                       raw=rec)

    def every_problem(self, path: str) -> dict[str, Problem]:
        """Every problem the file holds, not only the scored ones (what evolve's decontamination compares with)."""
        return self.read(path)

    def normalize_id(self, task_id) -> str:
        """Task ids as the dataset spells them; samples may give a bare number, or another "Name/" prefix."""
        s = str(task_id).strip()
        if self.id_prefix:
            return self.id_prefix + s if s.isdigit() else s
        return s.rsplit("/", 1)[-1]

    def qualified_id(self, problem: Problem) -> str:
        """The task id with its benchmark's prefix ("HumanEval/0", "Mbpp/11"), the same for a task's two releases."""
        return problem.task_id

    def origin_id(self, problem: Problem) -> str:
        """The problem this one is a version of: its own qualified id, or, for a translation (MultiPL-E), the
        original's ("HumanEval/0"). Decontamination counts a text shared by a problem's versions as one problem's."""
        return self.qualified_id(problem)

    def unavailable(self) -> str | None:
        """Why this machine cannot score the task (a compiler it lacks): it is then skipped, never scored 0%."""
        return None

    def problem_unavailable(self, problem: Problem) -> str | None:
        """Why this machine cannot run this one problem (a library it lacks): its samples are skipped, never
        failed."""
        return None

    def statement(self, problem: Problem) -> str:
        """The problem as posed to a person: MBPP's text, else the code prompt with its docstring (what evolve's
        decontamination compares instructions with)."""
        return problem.text or problem.prompt

    def reference_solution(self, problem: Problem) -> str:
        """The canonical solution as the dataset gives it (HumanEval: the function body after the prompt)."""
        return problem.raw.get("canonical_solution", problem.canonical)

    # ------------------------------------------------------------------------------------------- prompts

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        """The instruction of WizardCoder's prompt (its generation scripts turn four spaces into a tab)."""
        return (INSTRUCTION + problem.prompt).replace("    ", "\t")

    def prompt(self, problem: Problem, style: str = "wizardcoder", instructions: dict | None = None) -> str:
        """The text the model continues: WizardCoder's Alpaca prompt, or (`plain`) the code prompt itself."""
        if style == "wizardcoder":
            return ALPACA.prompt(self.instruction(problem, instructions))
        if style == "plain":
            return self.plain_prompt(problem)
        raise ConfigError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}.")

    def plain_prompt(self, problem: Problem) -> str:
        return problem.prompt

    @property
    def stop(self) -> list[str]:
        """Stop strings for WizardCoder's prompt."""
        return self.stop_words("wizardcoder")

    def stop_words(self, style: str) -> list[str]:
        return list(PLAIN_STOP) if style == "plain" else []

    def answer_field(self, style: str) -> str:
        """The samples field a generated answer goes in: raw answers are post-processed, completions are not."""
        return "response" if style == "wizardcoder" else "completion"

    # ------------------------------------------------------------------------------------------- answers

    def entry_point(self, problem: Problem) -> str | None:
        """The function the tests call (the sanitizer keeps what it reaches)."""
        return problem.entry_point

    def postprocess(self, text: str, problem: Problem | None = None, style: str = "wizardcoder") -> str:
        """A raw model answer -> code (postprocessing.STYLES)."""
        if style == "wizardcoder":
            return postprocessing.wizardcoder(text, self.fence_close, self.cuts)
        if style == "sanitize":
            return postprocessing.sanitize(text, self.entry_point(problem) if problem else None)
        if style == "none":
            return text
        raise ConfigError(f"unknown post-processing {style!r}; choose one of {', '.join(postprocessing.STYLES)}.")

    def solution(self, problem: Problem, sample: dict, style: str = "wizardcoder") -> str:
        """The program a sample stands for, before the tests are added: `solution` as is, `completion` after the
        code prompt, `response` post-processed and then used as a completion."""
        field = next(f for f in SAMPLE_FIELDS if f in sample)
        if field == "solution":
            return sample["solution"]
        body = sample["completion"] if field == "completion" else self.postprocess(sample["response"], problem, style)
        return problem.prompt + body if self.continues_prompt else body

    # ------------------------------------------------------------------------------------------- jobs

    def program(self, problem: Problem, code: str) -> str:
        """The whole script one solution runs (the solution followed by the task's tests)."""
        raise NotImplementedError

    def reference_work(self, path: str, problems: dict[str, Problem], task_ids: Iterable[str]) -> Work:
        """Jobs that must run before the samples' (the + tasks' expected outputs); none here."""
        return Work({}, [])

    def store_reference(self, path: str, results: list[Result]) -> None:
        """Keep what `reference_work`'s jobs returned."""

    def sample_work(self, path: str, problems: dict[str, Problem], todo: list[tuple[int, str, str]],
                    timeout: float | None = None) -> Work:
        """The jobs for samples `todo` = [(sample index, task_id, solution code)]; job ids are (index, part)."""
        limit = timeout or self.timeout
        return Work({}, [Job((i, "script"), "script", self.program(problems[tid], code), limit)
                         for i, tid, code in todo])

    def row(self, parts: dict[str, Result]) -> dict:
        """The verdict fields of one sample's results row, from its jobs' results ({part: result})."""
        r = parts["script"]
        return {"passed": r.passed, "status": r.status, "error": r.error, "seconds": r.seconds}

    # ------------------------------------------------------------------------------------------- scores

    @property
    def has_plus(self) -> bool:
        """A sample runs several test sets in turn (EvalPlus: `base`, then `plus`); summary.json then also gives
        pass@k up to each part, under the part's name."""
        return len(self.parts) > 1

    def part_scores(self, summary: dict) -> dict[str, dict[str, float]]:
        """{part: pass@k of the samples that passed it and every part before} ({} for a one-part task)."""
        return {p: summary[p] for p in self.parts if isinstance(summary.get(p), dict)} if self.has_plus else {}

    def scores(self, summary: dict) -> dict[str, float]:
        """pass@k over all of a sample's tests (the + tasks: base + plus), as a summary.json gives it."""
        parts = self.part_scores(summary)
        return parts[self.parts[-1]] if self.parts[-1] in parts else {
            k: v for k, v in summary.items() if k.startswith("pass@")}

    def base_scores(self, summary: dict) -> dict[str, float]:
        """pass@k on the first part's tests alone (HumanEval+'s base tests: HumanEval's); {} for a one-part task."""
        return self.part_scores(summary).get(self.parts[0], {})

    def group(self, problem: Problem) -> str | None:
        """The group whose pass@k a problem also counts in (DS-1000: its library); None: no groups."""
        return None

    def headline(self, summary: dict, k: int = 1) -> tuple[str, float]:
        """(label, value): the score this task is quoted by, pass@k over all of its tests."""
        return f"{self.title} pass@{k}", float(self.scores(summary)[f"pass@{k}"])
