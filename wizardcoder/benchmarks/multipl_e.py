"""MultiPL-E (Cassano et al. 2023): HumanEval translated into other languages, one benchmark per language.

| task           | records | a sample's program, run as                             |
|----------------|---------|--------------------------------------------------------|
| humaneval-js   | 161     | node                                                   |
| humaneval-cpp  | 161     | g++ -std=c++17, then the binary                        |
| humaneval-java | 158     | javac, then java -ea (org.javatuples on the path)      |
| humaneval-rs   | 156     | rustc --edition 2021, then the binary                  |
| humaneval-go   | 154     | go test -c, then the test binary                       |
| humaneval-php  | 161     | php                                                    |

Data: humaneval-<lang>.jsonl, MultiPL-E's "reworded" files as DeepSeek-Coder's evaluation ships them (byte for byte),
shipped gzipped in this package (wizardcoder/eval/data, 250 kB for the six), so evaluation and evolve's
decontamination have them offline.
A record: `name` (the task id, e.g. HumanEval_23_strlen), `prompt` (signature and doc comment), `tests`,
`stop_tokens`. The program is prompt + completion + "\\n" + tests (MultiPL-E's, made to print a per-program token when
they end: languages.with_end_of_tests); it passes when it compiles, every step exits 0 within its limits and the
token was printed (a program that exits 0 before its tests end fails; MultiPL-E's own harness passes it).
languages.py runs it, in the same sandbox as Python (checks.command_job). A language whose toolchain this machine
lacks is skipped (`unavailable`), never scored 0%.

Licence: MultiPL-E is BSD 3-Clause with a machine-learning restriction: its files may not be used to train a model.
They are evaluation data only, like HumanEval's.
"""
from __future__ import annotations

import functools
import re
from typing import ClassVar

from ..eval import languages
from ..eval.jobs import Job
from .base import INSTRUCTION, Benchmark, Problem, Work
from .sources import Source, cache_dir

# DeepSeek-Coder @ a4ba628 holds MultiPL-E's files byte for byte (their README in the shared data folder)
URL = ("https://github.com/deepseek-ai/DeepSeek-Coder/raw/a4ba628dfdc2e56f1fd6cdd86df103ce4d3df73e/"
       "Evaluation/HumanEval/data/")
# MultiPL-E's stop tokens per language: every record of a file carries the same ones (checked on all six files)
STOPS = {"js": ("\nfunction ", "\n/*", "\n//", "\nconsole.log"), "cpp": ("\n}",), "java": ("\n    }\n",),
         "rs": ("\n}",), "go": ("\nfunc", "struct", "\n// "), "php": ("\nfunction", "\n?>", "\n//", "\n#")}
FENCE = re.compile(r"```[^\n`]*\n(.*?)(?:```|\Z)", re.S)  # a fenced block of any language


class MultiPLE(Benchmark):
    """One MultiPL-E language; subclasses set `language` (languages.py's key)."""

    language: ClassVar[str]
    required = ("name", "prompt", "tests", "stop_tokens")
    timeout = 5.0  # CPU seconds of the run step (the compile step has its own: languages.COMPILE_CPU)
    id_prefix = ""  # MultiPL-E's names have no "/" prefix

    @classmethod
    def recognizes(cls, record: dict) -> bool:
        # one file per language; MultiPL-E's own key for Go is the test file's name, "go_test.go"
        return super().recognizes(record) and str(record.get("language", "")).split("_")[0] == cls.language

    def problem(self, rec: dict, index: int) -> Problem:
        header = rec["prompt"].rstrip().rsplit("\n", 1)[-1]  # the signature line the completion continues
        m = re.search(r"(\w+)\s*\(", header)
        return Problem(rec["name"], rec["prompt"], m.group(1) if m else None, "", raw=rec)

    def origin_id(self, problem: Problem) -> str:
        return "HumanEval/" + problem.task_id.split("_")[1]  # HumanEval_23_strlen -> HumanEval/23

    @functools.cached_property
    def _toolchain(self) -> languages.Toolchain | languages.Missing:
        try:
            return languages.toolchain(self.language, cache_dir())
        except languages.Missing as e:
            return e

    def toolchain(self) -> languages.Toolchain:
        """This machine's toolchain for the language; raises languages.Missing when there is none."""
        if isinstance(self._toolchain, languages.Missing):
            raise self._toolchain
        return self._toolchain

    def unavailable(self) -> str | None:
        tc = self._toolchain
        return f"skipped: toolchain missing ({tc})" if isinstance(tc, languages.Missing) else None

    @property
    def read_paths(self) -> tuple[str, ...]:
        tc = self._toolchain
        return () if isinstance(tc, languages.Missing) else tc.read_paths

    # ------------------------------------------------------------------------------------------- prompts, answers

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        what = INSTRUCTION.replace("Python", languages.TITLES[self.language])
        return (what + problem.prompt).replace("    ", "\t")

    def stop_words(self, style: str) -> list[str]:
        return list(STOPS[self.language]) if style == "plain" else []

    def postprocess(self, text: str, problem: Problem | None = None, style: str = "wizardcoder") -> str:
        """An answer -> a completion of the prompt: the first fenced block (any language), from after the
        signature's opening brace when the answer repeats it, cut at the first of the record's stop tokens (where
        a completion model's output would have been cut)."""
        if style == "none":
            return text
        code = text.replace("\r", "")
        m = FENCE.search(code)
        if m:
            code = m.group(1)
        if problem is not None:
            name = problem.entry_point
            at = re.search(rf"\b{re.escape(name)}\s*\(", code) if name else None
            brace = code.find("{", at.end()) if at else -1
            if brace >= 0:
                code = code[brace + 1:]
            cuts = [i for i in (code.find(s) for s in problem.raw["stop_tokens"]) if i >= 0]
            if cuts:
                code = code[:min(cuts)]
        return code

    # ------------------------------------------------------------------------------------------- jobs

    def program(self, problem: Problem, code: str) -> str:
        return code + "\n" + languages.with_end_of_tests(self.language, problem.raw["tests"])

    def sample_work(self, path: str, problems: dict[str, Problem], todo: list[tuple[int, str, str]],
                    timeout: float | None = None) -> Work:
        """One `command` job per sample: `timeout` (or the task's) CPU seconds for the run step, the toolchain's
        own for the compile step."""
        tc = self.toolchain()
        run_cpu = timeout or self.timeout
        key = f"{self.name}:{run_cpu:g}"
        return Work({key: tc.spec(run_cpu)},
                    [Job((i, "script"), "command", self.program(problems[tid], code), tc.cpu(run_cpu), task_key=key)
                     for i, tid, code in todo])


def _language(key: str) -> type[MultiPLE]:
    title = languages.TITLES[key]
    filename = f"humaneval-{key}.jsonl"
    return type(f"HumanEval{key.capitalize()}", (MultiPLE,), {
        "__doc__": f"MultiPL-E's HumanEval in {title}.", "language": key, "name": f"humaneval-{key}",
        "title": f"HumanEval-{title} (MultiPL-E)",
        "source": Source(filename, package=("wizardcoder.eval", f"data/{filename}.gz"), url=URL + filename)})


LANGUAGES = tuple(_language(key) for key in languages.FINDERS)
