"""Exact values across a `plus` job's result channel: the child encodes each output, the worker decodes and compares.

The encoding carries only values built of exact types, so nothing the program defines (a subclass, an object with
its own __eq__ or __hash__) reaches the worker's comparison, and decoding never runs code of the sender's choosing
(no pickle, no exec). One value, tag first, little-endian:

    N None   T True   F False   i <q> an int in 64 bits   I <I n> <n bytes> a bigger int (two's complement)
    f <d> float (nan and inf included, bit for bit)   c <dd> complex   s <I n> str (UTF-8, surrogates kept)
    b <I n> bytes   l t S z <I n> then n values: list, tuple, set, frozenset   d C <I n> then n key, value pairs:
    dict, collections.Counter   n <B k> <I n> <n bytes> a numpy scalar of type leaves[k] (its raw bytes; a str_
    or bytes_ its text)

`leaves` is the tuple of numpy's scalar types (`numpy_scalar_types`, the same order in every process of one
installation): evalplus compares `type(out) == type(exp)`, so an np.float64 must come back an np.float64. No process
imports numpy for them: `loaded_leaves()` is () until something else imported it (a program, or the worker unpickling
expected outputs that hold numpy scalars), and a decoder given leaves=None imports it only when a numpy scalar
arrives. (A worker holding numpy makes every program's fork dearer: ~0.5 ms of CPU each.) The child encodes with the
numpy its program imported, if any, looked up as each output is encoded: the worker decodes with its own, so a
program that tampers with its numpy changes only what it claims its own outputs are. Bounds: at most `max_items`
values in all and nesting depth MAX_DEPTH; past them the encoder answers None and the decoder raises ValueError (the
sample is `crashed`). An output of more than MAX_ITEMS values travels as the SHA-256 of its encoding instead
(`digester`: made in pieces, never whole); one nested too deep, or holding any other type, fails.

This module holds the plain-Python references of the C codec (_sandbox.encode, encode_nan, decode), used where the
extension is not built; tests hold the two to the same bytes and values.
"""
from __future__ import annotations

import collections
import functools
import hashlib
import struct
import sys

try:
    from .. import _sandbox
except ImportError:  # the C extension was not built: the references below
    _sandbox = None

MAX_DEPTH = 100  # nesting of lists/tuples/sets/dicts in one value
MAX_ITEMS = 10_000_000  # values in one output sent whole; a bigger one is sent as the SHA-256 of its encoding
DIGEST_ITEMS = 1 << 40  # no bound but the program's time and memory limits

_SEQ = {list: b"l", tuple: b"t", set: b"S", frozenset: b"z"}
_MAP = {dict: b"d", collections.Counter: b"C"}
_NUMERIC = "biufc"  # numpy kinds sent as raw bytes; U and S (str_, bytes_) as their text


def loaded_leaves() -> tuple:
    """numpy_scalar_types() when this process has imported numpy, else () (numpy is not imported here)."""
    return numpy_scalar_types() if "numpy" in sys.modules else ()


@functools.lru_cache(maxsize=None)
def numpy_scalar_types() -> tuple:
    """numpy's scalar types that travel (bool, integers, floats, complex, str_, bytes_), in a fixed order; () without
    numpy (numpy imported here: see loaded_leaves)."""
    try:
        import numpy as np
    except ImportError:
        return ()
    kinds = _NUMERIC + "US"
    return tuple(sorted({t for t in np.sctypeDict.values() if np.dtype(t).kind in kinds}, key=lambda t: t.__name__))


def encoder(leaves: tuple | None, max_items: int = MAX_ITEMS):
    """x -> bytes | None: _sandbox.encode (or encode_reference) with its functions bound now, before a program runs;
    leaves=None: loaded_leaves() at each call (a program's outputs: the numpy it imported, if any)."""
    pick = loaded_leaves if leaves is None else lambda: leaves
    if _sandbox is not None and hasattr(_sandbox, "encode"):
        encode, counter = _sandbox.encode, collections.Counter
        return lambda x: encode(x, max_items, pick(), counter)
    return lambda x: encode_reference(x, max_items, pick())


def nan_encoder(leaves: tuple, max_items: int = MAX_ITEMS):
    """x -> (encoder's answer, whether x holds a NaN): how the evaluator tells the expected outputs that are not
    equal to themselves (nan != nan), which no output can match byte for byte."""
    if _sandbox is not None and hasattr(_sandbox, "encode_nan"):
        encode, counter = _sandbox.encode_nan, collections.Counter
        return lambda x: encode(x, max_items, leaves, counter)
    return functools.partial(encode_nan_reference, max_items=max_items, leaves=leaves)


def encode_nan_reference(x, max_items: int = MAX_ITEMS, leaves: tuple = ()) -> tuple[bytes | None, bool]:
    data = encode_reference(x, max_items, leaves)  # a decoded copy differs from x only by its NaNs
    return data, data is not None and decode_reference(data, max_items, leaves) != x


def digester(leaves: tuple | None):
    """x -> the SHA-256 of its encoding (without an item budget; made in pieces, never whole), or None when x is
    not a value of the types above: how an output too big to send whole is compared. leaves=None as for encoder."""
    pick = loaded_leaves if leaves is None else lambda: leaves
    if _sandbox is not None and hasattr(_sandbox, "encode"):
        encode, counter, sha256 = _sandbox.encode, collections.Counter, hashlib.sha256

        def digest(x):
            h = sha256()
            return h.digest() if encode(x, DIGEST_ITEMS, pick(), counter, h.update) else None
        return digest
    return lambda x: digest_reference(x, pick())


def digest_reference(x, leaves: tuple = ()) -> bytes | None:
    data = encode_reference(x, DIGEST_ITEMS, leaves)
    return None if data is None else hashlib.sha256(data).digest()


def decoder(leaves: tuple | None, max_items: int = MAX_ITEMS):
    """bytes -> value (ValueError when malformed): _sandbox.decode, or decode_reference. leaves=None: numpy's types,
    numpy imported when the first numpy scalar arrives."""
    if _sandbox is not None and hasattr(_sandbox, "decode"):
        decode, counter, leaf = _sandbox.decode, collections.Counter, functools.partial(_leaf, leaves)
        return lambda data: decode(data, max_items, counter, leaf)
    return functools.partial(decode_reference, max_items=max_items, leaves=leaves)


class _Budget(Exception):
    """Not a value of the types above, or past the bounds."""


def encode_reference(x, max_items: int = MAX_ITEMS, leaves: tuple = ()) -> bytes | None:
    """`x` encoded, or None when it is not built only of the exact types above (or is too big or too deep)."""
    out: list[bytes] = []
    left = [max_items]
    try:
        _encode(x, out, left, leaves, 0)
    except _Budget:
        return None
    return b"".join(out)


def _sized(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<I", len(data)) + data


def _encode(x, out: list, left: list, leaves: tuple, depth: int) -> None:
    left[0] -= 1
    if left[0] < 0 or depth > MAX_DEPTH:
        raise _Budget
    t = type(x)
    if x is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if x else b"F")
    elif t is int:
        if -(1 << 63) <= x < (1 << 63):
            out.append(b"i" + struct.pack("<q", x))
        else:
            out.append(_sized(b"I", x.to_bytes(x.bit_length() // 8 + 1, "little", signed=True)))
    elif t is float:
        out.append(b"f" + struct.pack("<d", x))
    elif t is complex:
        out.append(b"c" + struct.pack("<dd", x.real, x.imag))
    elif t is str:
        out.append(_sized(b"s", x.encode("utf-8", "surrogatepass")))
    elif t is bytes:
        out.append(_sized(b"b", x))
    elif t in _SEQ:
        out.append(_SEQ[t] + struct.pack("<I", len(x)))
        for v in x:
            _encode(v, out, left, leaves, depth + 1)
    elif t in _MAP:
        out.append(_MAP[t] + struct.pack("<I", len(x)))
        for k, v in dict.items(x):
            _encode(k, out, left, leaves, depth + 1)
            _encode(v, out, left, leaves, depth + 1)
    elif t in leaves:
        if isinstance(x, str):
            data = str.encode(x, "utf-8", "surrogatepass")
        elif isinstance(x, bytes):
            data = bytes(x)
        else:
            data = bytes(memoryview(x))
        out.append(b"n" + struct.pack("<BI", leaves.index(t), len(data)) + data)
    else:
        raise _Budget


def decode_reference(data: bytes, max_items: int = MAX_ITEMS, leaves: tuple | None = ()):
    """The value `data` holds; ValueError when it is not exactly one well-formed value within the bounds."""
    r = _Reader(memoryview(data), max_items, leaves)
    x = r.value(0)
    if r.pos != len(data):
        raise ValueError("trailing bytes after the value")
    return x


class _Reader:
    def __init__(self, data: memoryview, max_items: int, leaves: tuple | None):
        self.data, self.pos, self.left, self.leaves = data, 0, max_items, leaves

    def take(self, n: int) -> bytes:
        if n > len(self.data) - self.pos:
            raise ValueError("truncated value")
        b = self.data[self.pos:self.pos + n].tobytes()
        self.pos += n
        return b

    def unpack(self, fmt: str):
        return struct.unpack(fmt, self.take(struct.calcsize(fmt)))

    def value(self, depth: int):
        self.left -= 1
        if self.left < 0 or depth > MAX_DEPTH:
            raise ValueError("too many values or nested too deep")
        tag = self.take(1)
        if tag == b"N":
            return None
        if tag in b"TF":
            return tag == b"T"
        if tag == b"i":
            return self.unpack("<q")[0]
        if tag == b"I":
            return int.from_bytes(self.take(self.unpack("<I")[0]), "little", signed=True)
        if tag == b"f":
            return self.unpack("<d")[0]
        if tag == b"c":
            return complex(*self.unpack("<dd"))
        if tag == b"s":
            try:
                return self.take(self.unpack("<I")[0]).decode("utf-8", "surrogatepass")
            except UnicodeDecodeError as e:
                raise ValueError("a str that is not UTF-8") from e
        if tag == b"b":
            return self.take(self.unpack("<I")[0])
        if tag in b"ltSz":
            n = self.unpack("<I")[0]
            if n > self.left:  # each value takes at least one byte and one item of the budget
                raise ValueError("too many values")
            items = [self.value(depth + 1) for _ in range(n)]
            try:
                return items if tag == b"l" else {b"t": tuple, b"S": set, b"z": frozenset}[tag](items)
            except TypeError as e:  # a list or dict in a set
                raise ValueError("an unhashable set member") from e
        if tag in b"dC":
            n = self.unpack("<I")[0]
            if 2 * n > self.left:
                raise ValueError("too many values")
            d = {} if tag == b"d" else collections.Counter()
            for _ in range(n):
                k = self.value(depth + 1)
                v = self.value(depth + 1)
                try:
                    dict.__setitem__(d, k, v)
                except TypeError as e:
                    raise ValueError("an unhashable dict key") from e
            return d
        if tag == b"n":
            k, n = self.unpack("<BI")
            return _leaf(self.leaves, k, self.take(n))
        raise ValueError(f"unknown tag {tag!r}")


def _leaf(leaves: tuple | None, k: int, data: bytes):
    """A numpy scalar of exactly type leaves[k] from what the encoder sent (its raw bytes, or a str_/bytes_'s text);
    leaves=None: numpy_scalar_types()."""
    if leaves is None:
        leaves = numpy_scalar_types()
    if k >= len(leaves):
        raise ValueError("an unknown numpy scalar type")
    import numpy as np

    t = leaves[k]
    if issubclass(t, str):
        try:
            return t(data.decode("utf-8", "surrogatepass"))
        except UnicodeDecodeError as e:
            raise ValueError("a str_ that is not UTF-8") from e
    if issubclass(t, bytes):
        return t(data)
    dtype = np.dtype(t)
    if len(data) != dtype.itemsize:
        raise ValueError(f"a {t.__name__} of {len(data)} bytes")
    return np.frombuffer(data, dtype)[0]
