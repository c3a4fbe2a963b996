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

import json
import math
import mmap
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
        import numpy as np

        assert type(out) == type(exp)  # noqa: E721 - evalplus compares exact types
        if isinstance(exp, (list, tuple)):
            assert len(out) == len(exp)
        assert np.allclose(out, exp, rtol=1e-07, atol=atol)
    else:
        assert exact_match


MADV_WIPEONFORK = 18  # Linux >= 4.14 (asm-generic); Python's mmap module names it only when built against it
VALUE, DIGEST, UNSENDABLE = 0, 1, 2  # how HiddenOutputs holds an expected output


class HiddenOutputs:
    """A task's expected outputs of one input set, kept where a forked child cannot read them: encoded (values.py)
    in a private anonymous mapping marked MADV_WIPEONFORK (a child sees zeros there; MADV_DONTFORK where the kernel
    lacks it: no mapping at all), with their offsets and kinds, and decoded one at a time when compared. The Python
    objects they came in are freed once encoded, so nothing a program can reach through gc or frames holds them, nor
    their sizes. An output of more than values.MAX_ITEMS values is kept as the SHA-256 of its encoding (DIGEST, what
    the child sends of such an output); one that is not a value of those types at all is UNSENDABLE (nothing
    matches it). `hidden` says whether the kernel took the advice."""

    def __init__(self, outputs: list, leaves: tuple):
        encode, digest = values.encoder(leaves), values.digester(leaves)
        blobs, kinds = [], bytearray()
        for x in outputs:
            b, kind = encode(x), VALUE
            if b is None:
                b, kind = digest(x), DIGEST
            if b is None:
                b, kind = b"", UNSENDABLE
            blobs.append(b)
            kinds.append(kind)
        self.n = n = len(blobs)
        offsets = [0]
        for b in blobs:
            offsets.append(offsets[-1] + len(b))
        table = struct.pack(f"<{n + 1}Q", *offsets) + bytes(kinds)
        self.base = len(table)
        self.map = mmap.mmap(-1, self.base + offsets[-1], flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.hidden = False
        for advice in (getattr(mmap, "MADV_WIPEONFORK", MADV_WIPEONFORK), getattr(mmap, "MADV_DONTFORK", None)):
            try:
                self.map.madvise(advice)
                self.hidden = True
                break
            except (TypeError, OSError):
                continue
        self.map[:self.base] = table
        for i, b in enumerate(blobs):
            self.map[self.base + offsets[i]:self.base + offsets[i + 1]] = b
        self.decode = values.decoder(leaves)

    def __len__(self) -> int:
        return self.n

    def get(self, i: int) -> tuple[int, object]:
        """(kind, the value or its digest) of expected output i."""
        lo, hi = struct.unpack_from("<2Q", self.map, 8 * i)
        kind = self.map[8 * (self.n + 1) + i]
        data = self.map[self.base + lo:self.base + hi]
        return kind, self.decode(data) if kind == VALUE else data


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
        while self.buf:
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
        if kind != VALUE:  # more values than an output sent whole may hold: it cannot be equal
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
        if kind == DIGEST and data == exp:
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
