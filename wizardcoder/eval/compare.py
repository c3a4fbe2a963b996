"""The worker's half of a `plus` job: read the outputs the child sends, compare each with the expected one.

The child (checks.plus_job) only runs the solution: it calls the entry point on each input and sends what evalplus's
check reads of the output (checks.reported) as an OUTPUT_FRAME in values.py's encoding, then its judge writes the
job's nonce and a JSON verdict. The worker feeds what arrives to a `Comparison`, which decodes each output (bounded,
no pickle) and compares it with its own copy of the expected output and input, as evalplus 0.3.1 `unsafe_execute`
does (`check_output`). Nothing the program can reach takes part in a "passed": the comparison runs in the worker,
the expected outputs are the worker's, and the child's verdict can only make the job fail (a failure claim goes
through pool.verdict_fields like any other).
"""
from __future__ import annotations

import bisect
import json
import math
import struct
import sys

from . import values
from .checks import DIGEST_FRAME, OUTPUT_FRAME

MAX_OUTPUT_BYTES = 256 << 20  # encoded size of one output (a bigger one fails the job)
MAX_VERDICT_BYTES = 64 << 10  # the judge writes at most about 12 kB


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
    not_none; HumanEval+'s find_zero; None for equality (with `atol` for floats). `out` is what checks.reported
    sends for that oracle."""
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
        assert type(out) == type(exp)  # noqa: E721 - evalplus compares exact types
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
        close = _allclose(out, exp, 1e-07, atol)
        if close is None:
            import numpy as np

            close = np.allclose(out, exp, rtol=1e-07, atol=atol)
        assert close
    else:
        assert exact_match


def _exact_float(v) -> bool:
    return type(v) is float or (type(v) is int and -(1 << 53) <= v <= 1 << 53)


def _allclose(out, exp, rtol: float, atol: float) -> bool | None:
    """np.allclose(out, exp, rtol, atol) as numpy 2.x computes it, in plain Python, for two numbers (numpy does Python
    arithmetic on them) or two flat lists/tuples of floats and ints float64 holds exactly (numpy's float64 arithmetic):
    isclose is |x - y| <= atol + rtol * |y| where y is finite, or x == y. None for anything else, left to numpy: a
    worker that imports numpy makes every later program's fork dearer (~0.5 ms of CPU each)."""
    if type(exp) in (list, tuple):
        if not (all(map(_exact_float, out)) and all(map(_exact_float, exp))):
            return None
        pairs = zip(map(float, out), map(float, exp))
    elif type(out) in (int, float, bool) and type(exp) in (int, float, bool):
        pairs = ((out, float(exp) if isinstance(exp, int) else exp),)
    else:
        return None
    return all((abs(x - y) <= atol + rtol * abs(y) and math.isfinite(y)) or x == y for x, y in pairs)


MADV_WIPEONFORK = 18  # Linux >= 4.14 (asm-generic); Python's mmap module names it only when built against it
# How HiddenOutputs holds an expected output: a value equal to itself, a value holding a NaN (not equal to itself),
# the digest of one too big to send whole, or nothing (not a value of values.py's types)
EQUAL, NAN, DIGEST, UNSENDABLE = 0, 1, 2, 3
NO_FRAME = b"x"  # the stored frame tag of an expected output no sent frame may match byte for byte


def expected_frames(outputs: list, leaves: tuple) -> bytes:
    """A + task's expected outputs of one input set as HiddenOutputs keeps them: the frames an honest child sends of
    them (checks.OUTPUT_FRAME or DIGEST_FRAME of values.py's encoding), one after the other, behind their count,
    offsets and kinds. An output of more than values.MAX_ITEMS values is kept as the SHA-256 of its encoding (DIGEST,
    what the child sends of such an output); one that is not a value of those types is UNSENDABLE (nothing matches
    it); one that holds a NaN is NAN (not equal to itself: compared only decoded). The frames of those last two
    carry NO_FRAME, so no frame a child sends equals them byte for byte."""
    pack = struct.Struct("<Q").pack
    frames, kinds = [], bytearray(len(outputs))  # EQUAL unless said otherwise below
    for i, (data, nan) in enumerate(map(values.nan_encoder(leaves), outputs)):
        if data is not None and not nan:  # the usual case
            frames.append(OUTPUT_FRAME + pack(len(data)) + data)
            continue
        tag, kinds[i] = NO_FRAME, NAN
        if data is None:
            data = values.digester(leaves)(outputs[i])
            tag, kinds[i] = (DIGEST_FRAME, DIGEST) if data is not None else (NO_FRAME, UNSENDABLE)
        frames.append(tag + pack(len(data or b"")) + (data or b""))
    offsets = [0]
    for f in frames:
        offsets.append(offsets[-1] + len(f))
    return struct.pack(f"<{len(frames) + 2}Q", len(frames), *offsets) + bytes(kinds) + b"".join(frames)


class HiddenOutputs:
    """A task's expected outputs of one input set, kept where a forked child cannot read them: as `expected_frames`
    in a private anonymous mapping marked MADV_WIPEONFORK (a child sees zeros there; MADV_DONTFORK where the kernel
    lacks it: no mapping at all). The worker makes it when the task arrives and the objects they came in are then
    freed, so nothing a program can reach through gc or frames holds them, nor their sizes. What the child sends is
    compared with them first as bytes, many frames at once (`match`), and decoded only where the bytes differ.
    `hidden` says whether the kernel took the advice."""

    def __init__(self, outputs: list, leaves: tuple):
        frames = expected_frames(outputs, leaves)
        (self.n,) = struct.unpack_from("<Q", frames)
        self.base = 8 * (self.n + 2) + self.n  # the frames start after the count, the offsets and the kinds
        import mmap  # here: only the + tasks' workers hold it (every module is mappings each fork copies)

        self.map = mmap.mmap(-1, len(frames), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.hidden = False
        for advice in (getattr(mmap, "MADV_WIPEONFORK", MADV_WIPEONFORK), getattr(mmap, "MADV_DONTFORK", None)):
            try:
                self.map.madvise(advice)
                self.hidden = True
                break
            except (TypeError, OSError):
                continue
        self.map[:] = frames
        self.offsets = memoryview(self.map)[8:8 * (self.n + 2)].cast("Q")  # a view of the mapping, not a copy
        self.decode = values.decoder(None)

    def __len__(self) -> int:
        return self.n

    def match(self, i: int, buf: bytearray) -> tuple[int, int]:
        """(k, size): the first `size` bytes of `buf` are the frames of expected outputs i .. i+k-1, byte for byte
        (so equal to them: the same values of the same types in the same order, no NaN); (0, 0) when they are not
        all (the caller then takes one frame at a time)."""
        start = self.offsets[i]
        j = bisect.bisect_right(self.offsets, start + len(buf), i, self.n + 1) - 1
        if j <= i:
            return 0, 0
        size = self.offsets[j] - start
        if self.map[self.base + start:self.base + start + size] != buf[:size]:
            return 0, 0
        return j - i, size

    def get(self, i: int) -> tuple[int, object]:
        """(kind, the value or its digest) of expected output i."""
        lo, hi = self.offsets[i] + 9, self.offsets[i + 1]
        kind = self.map[8 * (self.n + 2) + i]
        data = self.map[self.base + lo:self.base + hi]
        return kind, self.decode(data) if kind in (EQUAL, NAN) else data


class Comparison:
    """One plus job's outputs as they arrive (`feed`), compared in order; then `verdict` with the worker's own reply.

    `inputs` and `expected` are the worker's (the child's copies are its own), `decode` is values.decoder. The job
    passes only when every input's output arrived and matched, and the judge's verdict behind `nonce` came after
    them saying so."""

    def __init__(self, split: str, inputs, expected, oracle: str | None, atol: float, nonce: bytes, decode):
        self.split, self.inputs, self.expected, self.oracle, self.atol = split, inputs, expected, oracle, atol
        self.nonce, self.decode = nonce, decode
        self.buf = bytearray()
        self.checked = 0  # outputs compared, all matching
        self.failure: dict | None = None  # the first mismatch or malformed frame: the verdict
        self.tail: bytearray | None = None  # the judge's verdict, once its nonce arrived

    def feed(self, data: bytes) -> bool:
        """Take the next bytes from the child; True once the verdict is known (the child may be stopped)."""
        if self.tail is not None:
            self.tail += data
            if len(self.tail) > MAX_VERDICT_BYTES:
                return self._fail("crashed", "the program corrupted its result channel")
            return False
        self.buf += data
        head = len(OUTPUT_FRAME) + 8
        whole = True  # try many frames at once: once per feed, not again after a frame that differs
        while self.buf:
            if whole and self.checked < len(self.inputs):
                k, size = self.expected.match(self.checked, self.buf)
                whole = k > 0
                if k:
                    self.checked += k
                    del self.buf[:size]
                    continue
            if self.buf[:len(self.nonce)] == self.nonce:
                self.tail = self.buf[len(self.nonce):]
                self.buf = bytearray()
                return False
            if len(self.buf) < len(self.nonce) and self.nonce.startswith(self.buf):
                return False  # perhaps the nonce, not all here yet
            if len(self.buf) < head:
                return False
            frame = bytes(self.buf[:len(OUTPUT_FRAME)])
            if frame not in (OUTPUT_FRAME, DIGEST_FRAME):
                return self._fail("crashed", "the program corrupted its result channel")
            (n,) = struct.unpack_from("<Q", self.buf, len(OUTPUT_FRAME))
            i = self.checked
            if i >= len(self.inputs):
                return self._fail("crashed", "more outputs than inputs on the result channel")
            if n > MAX_OUTPUT_BYTES:
                return self._fail("failed", f"{self.split} test {i}: an output of more than {MAX_OUTPUT_BYTES >> 20} "
                                            "MiB encoded", i)
            if len(self.buf) < head + n:
                return False
            data = bytes(self.buf[head:head + n])
            del self.buf[:head + n]
            if not (self._check(i, data) if frame == OUTPUT_FRAME else self._check_digest(i, data)):
                return True
        return False

    def _check(self, i: int, data: bytes) -> bool:
        """Compare output i; False (and the verdict set) when it does not match."""
        try:
            out = self.decode(data)
        except (ValueError, RecursionError, MemoryError):
            self._fail("crashed", f"{self.split} test {i}: a malformed output on the result channel", i)
            return False
        inp = self.inputs[i]
        if self.oracle == "find_zero":  # checks.reported: the output and the input as the solution left it
            if type(out) is not tuple or len(out) != 2 or type(out[1]) is not list:
                self._fail("crashed", f"{self.split} test {i}: a malformed output on the result channel", i)
                return False
            out, inp = out
        kind, exp = self.expected.get(i)
        if kind not in (EQUAL, NAN):  # more values than an output sent whole may hold: it cannot be equal
            self._fail("failed", f"{self.split} test {i}: wrong output", i)
            return False
        try:
            check_output(self.oracle, inp, out, exp, self.atol)
        except Exception as e:  # noqa: BLE001 - evalplus fails the input on any exception of its check
            why = f": {e.args[0]}" if isinstance(e, AssertionError) and e.args and isinstance(e.args[0], str) else (
                "" if isinstance(e, AssertionError) else f" ({type(e).__name__}: {str(e)[:200]})")
            self._fail("failed", f"{self.split} test {i}: wrong output{why}", i)
            return False
        self.checked += 1
        return True

    def _check_digest(self, i: int, data: bytes) -> bool:
        """Output i, too big to send whole, came as the SHA-256 of its encoding: it matches an expected output kept
        the same way with the same digest (the same values of the same types in the same order), and nothing else
        (a smaller expected output cannot be equal to it)."""
        kind, exp = self.expected.get(i)
        if kind == DIGEST and data == exp:  # (match takes these first: here only when it did not)
            self.checked += 1
            return True
        self._fail("failed", f"{self.split} test {i}: wrong output", i)
        return False

    def _fail(self, status: str, error: str, failed_test: int | None = None) -> bool:
        self.failure = {"status": status, "error": error}
        if failed_test is not None:
            self.failure["failed_test"] = failed_test
        return True

    def verdict(self, reply: dict) -> dict:
        """The job's fields from the worker's own `reply` (_watch: a limit, a signal, an exit status, else {"raw"})
        and what was compared: a mismatch came first and is the verdict; then the worker's own findings; then the
        judge's verdict, "passed" only when every output matched ({"raw": JSON} for a failure claim, which the pool
        validates)."""
        if self.failure is not None:
            return self.failure
        if "raw" not in reply:
            return reply
        if self.tail is None:
            return {"status": "crashed", "error": "no verdict from the harness: the program wrote on its result "
                                                  "channel or exited before its tests ended"}
        try:
            claim = json.loads(self.tail.decode("utf-8"))
        except (ValueError, RecursionError):
            claim = None
        if isinstance(claim, dict) and claim.get("status") == "passed":
            if self.checked == len(self.inputs):
                return {"status": "passed", "tests": self.checked}
            return {"status": "crashed", "error": f"{self.split} test {self.checked}: the outputs ended before the "
                                                  "last input"}
        return {"raw": bytes(self.tail)}  # a failure claim (or garbage): pool.verdict_fields decides
