"""DS-1000 (Lai et al. 2022): data-science snippets checked inside each problem's own code context, in both modes.

- `ds1000`, completion mode, the 2024 release: `test.jsonl` of the hub dataset xlangai/DS-1000, one JSON object a
  line with `prompt` (ending where the solution starts), `reference_code`, `code_context` (defines
  `test_execution(solution)` and, for some problems, `test_string(solution)`) and `metadata` (`problem_id`,
  `library`, `perturbation_type`, ...). A sample's program is the `code_context` followed by `test_execution(code)`
  (and `test_string(code)` where the context defines it), as the release's own harness runs it.
- `ds1000-insertion`, insertion (fill-in-the-middle) mode, the original 2022 release: the folder `ds1000_data`
  (ds1000_data.zip unpacked), one folder a problem, `<Library>/Insertion/q<N>/`, holding `prompt.txt` (with
  `[insert]` where the solution goes), `reference_code.txt`, `code_context.txt` (a program with the same marker: it
  reads `input/input<i>.pkl` and writes `result/result_<i>.pkl` for `--test_case i`), `test_code.py` (`test(result,
  ans)`, and `stringTest(code)` for test_type 3), `.cfg` (library, test_type, test_case_cnt, perturbation) and the
  pickles in `input/` and `ans/`. The model writes the middle: the text before `[insert]` and the text after are
  given. A sample's program rebuilds the problem's folder in its scratch folder and runs the 2022 harness's steps
  there (each test case's program, then test_code's checks), all inside the sandbox.

Both modes: WizardCoder's Alpaca prompt around the problem (insertion: asking for the code at the marked place),
DS-1000's stop words and post-processing in every style (answers are snippets inserted into a context, not
definitions a sanitizer could pick out), pass@k per library (`group`), and a problem whose modules this machine lacks
(tensorflow is optional) is skipped with that reason, never failed (`problem_unavailable`).
"""
from __future__ import annotations

import base64
import configparser
import functools
import importlib.util
import os
import re

from ..errors import DataError
from ..eval import postprocessing
from .base import Benchmark, Problem
from .sources import Source, cache_dir

STOP = ("</code>", "# SOLUTION END")  # DS-1000's prompts close the answer with these
LIBRARIES = ("Pandas", "Numpy", "Matplotlib", "Tensorflow", "Scipy", "Sklearn", "Pytorch")  # the release's order
MARK = "[insert]"  # where the solution goes in a 2022 prompt and code context
INSERT_ASK = f"Write the code that replaces {MARK} in the code above: only that code, not the code around it."
FIM = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")  # StarCoder's fill-in-the-middle tokens (prefix-suffix-middle)
PLOT_CALLS = ("plt.show()", "plt.clf()", "plt.close()", "savefig")  # the 2022 harness drops a Matplotlib answer's
# lines with these (they would clear or replace the figure the test reads)
_IMPORT = re.compile(r"^[ \t]*(?:import[ \t]+([A-Za-z_]\w*)(?:\.\w+)*(?:[ \t]+as[ \t]+\w+)?[ \t]*(?:[,;#]|$)"
                     r"|from[ \t]+([A-Za-z_]\w*)[\w.]*[ \t]+import\b)", re.M)  # the top-level modules a code imports


@functools.lru_cache(maxsize=None)
def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class _DS1000(Benchmark):
    """What both modes share: stop words, post-processing, library groups, modules a problem needs."""

    timeout = 60.0  # pandas, numpy, scipy, matplotlib contexts (the releases' own limit)
    preload = ("numpy", "pandas")
    continues_prompt = False
    group_name = "library"

    def stop_words(self, style: str) -> list[str]:
        return list(STOP)

    def postprocess(self, text: str, problem: Problem | None = None, style: str = "wizardcoder") -> str:
        """DS-1000's own rules; an instruction answer's prose before its first code fence is dropped first."""
        if style in ("wizardcoder", "sanitize"):
            fence = text.find("```")
            return postprocessing.ds1000(text[fence:] if fence > 0 else text)
        return super().postprocess(text, problem, style)

    def group(self, problem: Problem) -> str:
        return problem.raw["metadata"]["library"]

    def problem_unavailable(self, problem: Problem) -> str | None:
        """The modules the problem's code imports that this machine lacks (tensorflow, where it is not installed)."""
        found = {a or b for a, b in _IMPORT.findall(problem.raw["code_context"])}
        absent = sorted(m for m in found if not _installed(m))
        if absent:
            return f"needs {', '.join(absent)}, not installed here"
        return None


class DS1000(_DS1000):
    name = "ds1000"
    title = "DS-1000"
    source = Source("test.jsonl", hub=("xlangai/DS-1000", "test.jsonl"))
    required = ("prompt", "reference_code", "code_context", "metadata")

    def problem(self, rec: dict, index: int) -> Problem:
        return Problem(str(rec["metadata"].get("problem_id", index)), rec["prompt"], None, rec["reference_code"],
                       raw=rec)

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        return problem.prompt  # its prompt is already an instruction

    def program(self, problem: Problem, code: str) -> str:
        ctx = problem.raw["code_context"]
        return (ctx + "\n" + f"code = {code!r}\n" + "test_execution(code)\n"
                + ("test_string(code)\n" if "test_string(" in ctx else "\n"))


# The 2022 harness's steps (DS1000Problem.test), run inside the sandbox in the problem's rebuilt folder: each test
# case's program (code_context with the answer inserted, `--test_case i`), then test_code.py's `stringTest` on the
# answer without its print lines (test_type 3) and `test(result, ans) == 1` on every case's pickled result. The
# expected answers are written only after the programs ran. Python 3.10 removed the `parser` module the release's
# stringTests parse with: a stand-in gives the answer's tokens (the leaves they search for `for` and `while`).
RUNNER = '''
def _ds1000(files, answers, program, code, cases, string_test):
    import base64, importlib.util, os, pickle, sys

    def unpack(tree):
        for rel, data in tree.items():
            os.makedirs(os.path.dirname(rel) or ".", exist_ok=True)
            with open(rel, "wb") as f:
                f.write(base64.b64decode(data))

    unpack(files)
    os.makedirs("result", exist_ok=True)
    errors = {}
    for i in range(1, cases + 1):
        sys.argv = ["program.py", "--test_case", str(i)]
        try:
            exec(compile(program, "program.py", "exec", dont_inherit=True), {"__name__": "__main__"})
        except SystemExit:
            pass
        except Exception as e:  # the 2022 harness ignores the exit status: the result file decides
            errors[i] = f"{type(e).__name__}: {e}"
    unpack(answers)
    if importlib.util.find_spec("parser") is None:  # gone since Python 3.10; the release's stringTests import it
        import io, tokenize, types
        sys.modules["parser"] = parser = types.ModuleType("parser")
        parser.suite = lambda source: compile(source, "<answer>", "exec", dont_inherit=True) and source
        parser.st2list = lambda source: [t.string for t in tokenize.generate_tokens(io.StringIO(source).readline)]
    spec = importlib.util.spec_from_file_location("test_code", "test_code.py")
    test_code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_code)
    if string_test:
        assert test_code.stringTest("\\n".join(l for l in code.split("\\n") if "print" not in l)), "stringTest failed"
    for i in range(1, cases + 1):
        try:
            with open(f"result/result_{i}.pkl", "rb") as f:
                result = pickle.load(f)
        except Exception as e:  # none, or half written: the program's own error says why
            raise AssertionError(f"test case {i}: no result ({errors.get(i) or f'{type(e).__name__}: {e}'})") from None
        ans = None
        if os.path.exists(f"ans/ans{i}.pkl"):
            with open(f"ans/ans{i}.pkl", "rb") as f:
                ans = pickle.load(f)
        assert test_code.test(result, ans) == 1, f"test case {i}: wrong result"
'''


class DS1000Insertion(_DS1000):
    name = "ds1000-insertion"
    title = "DS-1000 (insertion)"
    source = Source("ds1000_data")  # a folder: the 2022 release's ds1000_data.zip, unpacked
    required = ("prompt.txt", "reference_code.txt", "code_context.txt", "test_code.py", ".cfg")
    mode = "Insertion"

    @classmethod
    def recognizes(cls, record: dict) -> bool:
        return False  # a folder, not a file of records

    @classmethod
    def recognizes_folder(cls, path: str) -> bool:
        return any(os.path.isdir(os.path.join(path, lib, cls.mode)) for lib in LIBRARIES)

    def locate(self, data: str | None = None) -> str:
        """The `ds1000_data` folder: `data`, else ours in the local cache; never fetched (the release is a zip)."""
        if data is None:
            cached = os.path.join(cache_dir(), self.source.filename)
            if os.path.isdir(cached):
                return cached
            raise DataError(f"{self.title} is not cached here ({cached}); pass the 2022 release's ds1000_data "
                            "folder (ds1000_data.zip unpacked) with --data.")
        if not os.path.isdir(os.path.join(data, "")):
            raise DataError(f"--data {data}: no such folder; give the 2022 release's ds1000_data folder "
                            "(ds1000_data.zip unpacked), which holds <Library>/Insertion/q<N>/.")
        return data

    def read(self, path: str) -> dict[str, Problem]:
        """Every `<Library>/Insertion/q<N>` folder, libraries in the release's order, problems by number."""
        out: dict[str, Problem] = {}
        for lib in LIBRARIES:
            folder = os.path.join(path, lib, self.mode)
            if not os.path.isdir(folder):
                continue
            names = [n for n in os.listdir(folder) if re.fullmatch(r"q\d+", n)]
            for name in sorted(names, key=lambda n: int(n[1:])):
                out[f"{lib}/{name}"] = self._problem(os.path.join(folder, name), f"{lib}/{name}")
        if not out:
            raise DataError(f"{path}: no {self.title} problems found (no <Library>/{self.mode}/q<N> folders); give "
                            "the 2022 release's ds1000_data folder.")
        return out

    def _problem(self, folder: str, task_id: str) -> Problem:
        missing = [f for f in self.required if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise DataError(f"{folder}: lacks {', '.join(missing)}; is this the 2022 release's ds1000_data folder?")
        text = {}
        for f in self.required[:-1]:
            with open(os.path.join(folder, f), encoding="utf-8") as fh:
                text[f.split(".")[0]] = fh.read()
        cfg = configparser.RawConfigParser()
        cfg.read(os.path.join(folder, ".cfg"), encoding="utf-8")
        try:
            meta = {"library": cfg.get("library", "lib"), "test_type": int(cfg.get("test", "test_type")),
                    "test_case_cnt": int(cfg.get("test", "test_case_cnt")),
                    "perturbation_type": cfg.get("perturbation", "perturbation_type"),
                    "perturbation_origin_id": cfg.get("perturbation", "perturbation_origin_id")}
        except (configparser.Error, ValueError) as e:
            raise DataError(f"{folder}/.cfg: {e}; it needs [library] lib, [test] test_type and test_case_cnt, "
                            "[perturbation] perturbation_type and perturbation_origin_id.") from None
        if text["prompt"].count(MARK) != 1:
            raise DataError(f"{folder}/prompt.txt: needs exactly one {MARK} (the place the solution goes).")
        return Problem(task_id, text["prompt"], None, text["reference_code"],
                       raw={**text, "metadata": meta, "folder": folder})

    def normalize_id(self, task_id) -> str:
        return str(task_id).strip()  # "Numpy/q3": the library is part of the id

    # ------------------------------------------------------------------------------------------- prompts

    def instruction(self, problem: Problem, instructions: dict | None = None) -> str:
        return problem.prompt.rstrip() + "\n\n" + INSERT_ASK

    def plain_prompt(self, problem: Problem) -> str:
        """StarCoder's fill-in-the-middle prompt around the marker (prefix and suffix trimmed as the bigcode harness
        does)."""
        prefix, suffix = problem.prompt.split(MARK)
        return f"{FIM[0]}{prefix.strip()}\n{FIM[1]}\n{suffix.strip()}\n{FIM[2]}"

    # ------------------------------------------------------------------------------------------- jobs

    def program(self, problem: Problem, code: str) -> str:
        raw, meta = problem.raw, problem.raw["metadata"]
        if meta["library"] == "Matplotlib":
            code = "\n".join(line for line in code.split("\n") if not any(c in line for c in PLOT_CALLS))
        files, answers = _tree(raw["folder"])
        return (RUNNER + f"\n_ds1000({files!r}, {answers!r}, {raw['code_context'].replace(MARK, code)!r}, "
                f"{code!r}, {max(1, meta['test_case_cnt'])}, {meta['test_type'] == 3})\n")


@functools.lru_cache(maxsize=64)
def _tree(folder: str) -> tuple[dict[str, str], dict[str, str]]:
    """A problem folder's files, base64 by relative path: (everything but ans/, ans/)."""
    files: dict[str, str] = {}
    answers: dict[str, str] = {}
    for root, _, names in os.walk(folder):
        for name in sorted(names):
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            with open(path, "rb") as f:
                data = base64.b64encode(f.read()).decode()
            (answers if rel.split(os.sep)[0] == "ans" else files)[rel] = data
    return files, answers
