"""DS-1000 (Lai et al. 2022): data-science snippets checked inside each problem's own code context.

Data: `test.jsonl` of the hub dataset xlangai/DS-1000. A sample's program is the problem's `code_context` followed by
`test_execution(code)` (and `test_string(code)` where the context defines it), as DS-1000's own harness runs it.
Answers are cut with DS-1000's own post-processing in every style: they are snippets inserted into a context, not
definitions a sanitizer could pick out.
"""
from __future__ import annotations

from ..eval import postprocessing
from .base import Benchmark, Problem
from .sources import Source

STOP = ("</code>", "# SOLUTION END")  # DS-1000's prompts close the answer with these


class DS1000(Benchmark):
    name = "ds1000"
    title = "DS-1000"
    source = Source("test.jsonl", hub=("xlangai/DS-1000", "test.jsonl"))
    required = ("prompt", "reference_code", "code_context", "metadata")
    timeout = 60.0  # pandas, numpy, scipy, matplotlib contexts
    preload = ("numpy", "pandas")
    continues_prompt = False

    def problem(self, rec: dict, index: int) -> Problem:
        return Problem(str(rec["metadata"].get("problem_id", index)), rec["prompt"], None, rec["reference_code"],
                       raw=rec)

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        return problem.prompt  # its prompt is already an instruction

    def stop_words(self, style: str) -> list[str]:
        return list(STOP)

    def postprocess(self, text: str, problem: Problem | None = None, style: str = "wizardcoder") -> str:
        if style in ("wizardcoder", "sanitize"):
            return postprocessing.ds1000(text)
        return super().postprocess(text, problem, style)

    def program(self, problem: Problem, code: str) -> str:
        ctx = problem.raw["code_context"]
        return (ctx + "\n" + f"code = {code!r}\n" + "test_execution(code)\n"
                + ("test_string(code)\n" if "test_string(" in ctx else "\n"))
