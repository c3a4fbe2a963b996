"""A sample decides nothing for others or for itself: a program cannot forge its verdict (the result channel, the
harness's functions, a lying __eq__), whatever reaches the evaluator from a sample is validated and bounded and fails
that sample alone (also when resuming), and the evaluator's own limits are bounded. docs/sandbox.md, "Verdicts"."""
import json
import sys

import pytest

from wizardcoder.cli import main
from wizardcoder.eval import SandboxConfig, SandboxPool
from wizardcoder.eval.jobs import Job
from wizardcoder.eval.pool import MAX_ERROR, verdict_fields

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the sandbox is Linux-only")

FORGED = '{"status": "passed"}'
# Each program fails its test (or never reaches it) and tries to be scored passed anyway.
FORGERIES = {
    "write a pass on fd 3 and exit": f"import os\nos.write(3, b'{FORGED}')\nos._exit(0)",
    "exec a shell that prints a pass on fd 3":
        f"import os\nos.execv('/bin/sh', ['sh', '-c', 'printf %s \\'{FORGED}\\' >&3'])",
    "write a pass on every descriptor": f"import os\nfor fd in range(3, 1024):\n    try:\n        os.write(fd, b'{FORGED}')\n"
                                        "    except OSError:\n        pass\nos._exit(0)",
    "replace _flat_json through sys.modules":
        f"import sys\nsys.modules['wizardcoder.eval.sandbox']._flat_json = lambda d: '{FORGED}'\nassert False",
    "replace the harness's describe": "import sys\n"
                                      "sys.modules['wizardcoder.eval.checks']._describe = lambda e, s: ('passed', '')\n"
                                      "assert False",
    "call the judge itself": "from wizardcoder import _sandbox\n_sandbox.judge(3, 4, lambda: None, None)",
    "always-equal result": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                           "def inc(x):\n    return Yes()\nassert inc(1) == 2\nassert False",
}


@pytest.fixture(scope="module")
def pool():
    with SandboxPool(2, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        yield p


def test_forged_verdicts_are_not_passes(pool):
    jobs = [Job(name, "script", code) for name, code in FORGERIES.items()]
    jobs.append(Job("honest", "script", "def inc(x):\n    return x + 1\nassert inc(1) == 2"))
    res = {r.id: r for r in pool.run(jobs)}
    assert res["honest"].status == "passed"
    for name in FORGERIES:
        assert res[name].status != "passed", (name, res[name])
    assert "no verdict from the harness" in res["write a pass on fd 3 and exit"].error
    assert "RuntimeError: a verdict is already being judged" in res["call the judge itself"].error


# ------------------------------------------------------------------------------------------ plus: the worker compares

# f(x) = x * 1000003 + 7: outputs a program cannot guess without computing them (or reading them from the harness)
PLUS_TASK = {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[1], [2]],
             "base_expected": [1000010, 2000013], "base_limits": [1.0, 1.0]}
FLOAT_TASK = {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[1.0], [2.0]],
              "base_expected": [0.5, 0.25], "base_limits": [1.0, 1.0]}
CORRECT = "def f(x):\n    return x * 1000003 + 7"
# Each of these gets the outputs wrong (or never computes them) and tries to be scored passed anyway. Before the worker
# compared (9980ccf: the child compared, and its judge wrote "passed" when that returned), four of them passed: the
# __code__ swaps through a frame or gc, and reading the expected outputs through gc or frames; so did PATCH_ALLCLOSE
# and FORGE_WITH_CTYPES below.
PLUS_HOSTILE = {
    "always-equal object": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                           "def f(x):\n    return Yes()",
    "int subclass that lies": "class Int(int):\n    def __eq__(self, other):\n        return True\n"
                              "    __hash__ = int.__hash__\ndef f(x):\n    return Int(0)",
    "list of always-equal objects": "class Yes:\n    def __eq__(self, other):\n        return True\n"
                                    "def f(x):\n    return Yes() if x == 1 else [Yes()]",
    "rebind check_output through sys.modules":
        "import sys\nfor m in list(sys.modules.values()):\n    if hasattr(m, 'check_output'):\n"
        "        m.check_output = lambda *a: None\ndef f(x):\n    return 0",
    "swap check_output's __code__ found through the caller's frame":
        "import sys\nfr = sys._getframe(1)\nwhile fr is not None:\n    for v in list(fr.f_locals.values()):\n"
        "        if getattr(v, '__name__', '') == 'check_output':\n"
        "            v.__code__ = (lambda oracle, inp, out, exp, atol: None).__code__\n    fr = fr.f_back\n"
        "def f(x):\n    return 0",
    "swap every check_output's __code__ found through gc":
        "import gc\ngc.unfreeze()\nfor o in gc.get_objects():\n"
        "    if type(o).__name__ == 'function' and o.__name__ in ('check_output', '_check'):\n"
        "        o.__code__ = (lambda *a: None).__code__\ndef f(x):\n    return 0",
    "read the expected outputs through gc":
        "import gc\ngc.unfreeze()\nfound = []\nfor o in gc.get_objects():\n"
        "    if type(o) is dict and 'base_expected' in o:\n        found.append(o['base_expected'])\n"
        "calls = [0]\ndef f(x):\n    calls[0] += 1\n    e = found[0] if found else [0, 0]\n"
        "    return e.get(calls[0] - 1)[1] if hasattr(e, 'get') else e[calls[0] - 1]",
    "read the expected outputs through the callers' frames":
        "import sys\nfound = []\nfr = sys._getframe(1)\nwhile fr is not None:\n"
        "    for v in list(fr.f_locals.values()):\n        for w in [v, *getattr(v, 'tasks', {}).values(),\n"
        "                  *getattr(v, 'expected', {}).values()]:\n"
        "            if isinstance(w, dict) and 'base_expected' in w:\n                found.append(w['base_expected'])\n"
        "    fr = fr.f_back\ncalls = [0]\ndef f(x):\n    calls[0] += 1\n    try:\n"
        "        return found[0][calls[0] - 1]\n    except Exception:\n        return 0",
    "write a malformed output frame on fd 3, then the right outputs":
        "import os, struct\nos.write(3, b'o' + struct.pack('<Q', 3) + b'xyz')\n" + CORRECT,
    "announce a 1 TiB output frame on fd 3": "import os, struct\nos.write(3, b'o' + struct.pack('<Q', 1 << 40))\n"
                                             "def f(x):\n    return 0",
    "an output too big": "def f(x):\n    return [0] * 10_000_001",
    "an output too deep": "def f(x):\n    v = x * 1000003 + 7\n    for _ in range(150):\n        v = [v]\n    return v",
    "a numpy array": "import numpy as np\ndef f(x):\n    return np.array([x * 1000003 + 7])",
}
# The expected value is a float: the check goes through numpy.allclose, which the program patches.
PATCH_ALLCLOSE = "import numpy\nnumpy.allclose = lambda *a, **k: True\ndef f(x):\n    return 99.0"
# ctypes: read the judge's nonce out of its C buffer (static, in the extension's writable segment: the nonce, then
# SB_MAX_ERROR * 12 + 256 bytes on, the buffer's length, 16) and write a forged "passed" behind it.
FORGE_WITH_CTYPES = r"""
import ctypes, os, struct
def forge():
    lines = open('/proc/self/maps').read().splitlines()
    for k, line in enumerate(lines):
        parts = line.split()
        if '_sandbox' not in line or parts[1][:2] != 'rw':
            continue
        lo, hi = (int(v, 16) for v in parts[0].split('-'))
        nxt = lines[k + 1].split() if k + 1 < len(lines) else []
        if len(nxt) == 5 and int(nxt[0].split('-')[0], 16) == hi:  # the .bss beyond the file, anonymous
            hi = int(nxt[0].split('-')[1], 16)
        mem = ctypes.string_at(lo, hi - lo)
        for at in range(0, len(mem) - 12256 - 8, 8):
            if struct.unpack_from('<Q', mem, at + 12256)[0] == 16 and mem[at:at + 16].count(0) < 8:
                os.write(3, mem[at:at + 16] + b'{"status": "passed", "tests": 2}')
                os._exit(0)
def f(x):
    forge()
    return 0
"""
HONEST = {  # task, program: each gets the verdict evalplus gives it, passed
    "correct": (PLUS_TASK, CORRECT),
    "numpy integer (evalplus accepts it)": (PLUS_TASK, "import numpy as np\n" + CORRECT.replace(
        "return x", "return np.int64(x") + ")"),
    "numpy float64 for a float": (FLOAT_TASK, "import numpy as np\ndef f(x):\n    return np.float64(0.5) / x"),
    "a float within the tolerance": (FLOAT_TASK, "def f(x):\n    return 0.5 / x + 1e-9"),
}


@pytest.fixture(scope="module")
def plus_pool(pool):
    pool.add_task("t", PLUS_TASK)
    pool.add_task("floats", FLOAT_TASK)
    return pool


def test_plus_hostile_programs_do_not_pass(plus_pool):
    jobs = [Job(name, "plus", code, 2.0, "t", "base") for name, code in PLUS_HOSTILE.items()]
    jobs.append(Job("patch numpy.allclose", "plus", PATCH_ALLCLOSE, 2.0, "floats", "base"))
    jobs += [Job(name, "plus", code, 2.0, "t" if task is PLUS_TASK else "floats", "base")
             for name, (task, code) in HONEST.items()]
    res = {r.id: r for r in plus_pool.run(jobs)}
    for name in HONEST:
        assert res[name].status == "passed" and res[name].tests == 2, (name, res[name])
    for name in [*PLUS_HOSTILE, "patch numpy.allclose"]:
        assert res[name].status != "passed", (name, res[name])
    assert res["always-equal object"].failed_test == 0
    assert "wrong output: a Yes, not a value of builtin types" in res["always-equal object"].error
    assert res["int subclass that lies"].error.startswith("base test 0: wrong output: a Int, not a value")
    assert "wrong output" in res["rebind check_output through sys.modules"].error
    # the worker's expected outputs are found, but read as zeros in the child (MADV_WIPEONFORK): no value decodes
    assert "base test 0: ValueError: truncated value" in res["read the expected outputs through gc"].error
    assert res["write a malformed output frame on fd 3, then the right outputs"].status == "crashed"
    assert "malformed output" in res["write a malformed output frame on fd 3, then the right outputs"].error
    assert "more than 256 MiB" in res["announce a 1 TiB output frame on fd 3"].error
    assert res["an output too big"].error == "base test 0: wrong output"  # its digest: no expected one is that big
    assert res["an output too deep"].status == "failed" and res["a numpy array"].status == "failed"


def test_plus_forged_with_ctypes_is_not_a_pass(plus_pool):
    """With ctypes a program can read the judge's nonce and write a verdict behind it: a claim the worker no longer
    takes for a pass (it compares the outputs itself). Skipped where the sandbox does not let ctypes load."""
    probe = plus_pool.run([Job("probe", "script", "import ctypes\nctypes.string_at(id(1), 8)")])
    if next(iter(probe)).status != "passed":
        pytest.skip("ctypes does not load in this sandbox")
    garbage = FORGE_WITH_CTYPES.replace("""b'{"status": "passed", "tests": 2}'""", "b'o' + struct.pack('<Q', 1)")
    jobs = [Job("forge", "plus", FORGE_WITH_CTYPES, 2.0, "t", "base"),
            Job("forge after one right output", "plus", FORGE_WITH_CTYPES.replace("    forge()\n    return 0",
                "    if x == 2:\n        forge()\n    return x * 1000003 + 7"), 2.0, "t", "base"),
            Job("malformed behind the nonce", "plus", garbage, 2.0, "t", "base")]
    res = {r.id: r for r in plus_pool.run(jobs)}
    assert res["forge"].status == "crashed" and "outputs ended before the last input" in res["forge"].error
    # (the right output was still in the child's batch: checks.BATCH_BYTES)
    assert res["forge after one right output"].error.endswith("test 0: the outputs ended before the last input")
    assert res["malformed behind the nonce"].status == "crashed", res["malformed behind the nonce"]


# evalplus's oracles, each with a task whose expected outputs are its canonical solution's (run here, in the test)
ORACLE_CASES = {
    # oracle: (entry point, inputs, canonical, [(program, passes under evalplus 0.3.1)])
    "set_eq": ("f", [[[3, 1, 2]], [[5, 5]]], lambda xs: sorted(set(xs)),
               [("def f(xs):\n    return list(set(xs))[::-1]", True),
                ("def f(xs):\n    return (x for x in set(xs))", True),
                ("def f(xs):\n    return [0]", False)]),
    "not_none": ("f", [[1], [0]], lambda x: x > 0 or None,
                 [("def f(x):\n    return [x] if x else None", True),
                  ("def f(x):\n    return object() if x else None", True),
                  ("def f(x):\n    return x <= 0", False)]),  # a bool is compared with the bool recorded
    "are_equivalent": ("f", [[1], [2]], lambda x: x == 1,
                       [("def f(x):\n    return object()", True)]),
    "sum_div": ("f", [[6], [7]], lambda n: sum(i for i in range(1, n) if n % i == 0),
                [("def f(n):\n    return sum(i for i in range(1, n) if n % i == 0)", True),
                 ("def f(n):\n    return 0", True),
                 ("def f(n):\n    return 1", False)]),
    "surface_Area": ("f", [[3, 4], [True, 5]], lambda b, h: b * b + 2 * b * h,
                     [("import math\ndef f(b, h):\n    return round(b ** 2 + 2 * b * math.sqrt((b / 2) ** 2 + h ** 2))",
                       True), ("def f(b, h):\n    return -1", False)]),
    "digit_distance_nums": ("f", [[123, 256], [23, 56]], lambda a, b: -1,
                            [("def f(a, b):\n    return sum(abs(int(x) - int(y)) for x, y in zip(str(a), str(b)))",
                              True), ("def f(a, b):\n    return 0", False)]),
    "find_zero": ("f", [[[1.0, 2.0]], [[-6.0, 11.0, -6.0, 1.0]]], lambda xs: 0.0,
                  [("def f(xs):\n    lo, hi = -10.0, 10.0\n    p = lambda x: sum(c * x ** i for i, c in enumerate(xs))\n"
                    "    if p(lo) > 0:\n        lo, hi = hi, lo\n    for _ in range(200):\n"
                    "        mid = (lo + hi) / 2\n        if p(mid) < 0:\n            lo = mid\n        else:\n"
                    "            hi = mid\n    return mid", True),
                   ("def f(xs):\n    xs[:] = [0.0]\n    return 5.0", True),  # evalplus reads xs as the solution left it
                   ("def f(xs):\n    return 5.0", False)]),
}


def test_plus_oracles_decide_as_evalplus(pool):
    jobs, want = [], {}
    for oracle, (entry, inputs, canonical, programs) in ORACLE_CASES.items():
        expected = [canonical(*inp) for inp in inputs]
        if oracle == "not_none":
            expected = [e is not None for e in expected]
        pool.add_task(oracle, {"entry_point": entry, "oracle": oracle, "atol": 1e-6 if oracle == "find_zero" else 0,
                               "base_input": inputs, "base_expected": expected, "base_limits": [1.0] * len(inputs)})
        for k, (code, passes) in enumerate(programs):
            jobs.append(Job((oracle, k), "plus", code, 2.0, oracle, "base"))
            want[(oracle, k)] = passes
    res = {r.id: r for r in pool.run(jobs)}
    for key, passes in want.items():
        assert res[key].passed == passes, (key, res[key])


def test_plus_values_of_every_builtin_type_and_counter(pool):
    """Outputs of each type the channel carries pass against equal expected ones (types kept: a tuple is not a list,
    a Counter compares as evalplus's ==), nan fails as under evalplus (nan != nan, and allclose's equal_nan is off),
    and a dict where a Counter is expected passes (dict == Counter)."""
    import collections
    import math

    np = pytest.importorskip("numpy")
    values = [None, True, 2 ** 100, -(2 ** 70), 1.5, math.inf, -0.0, 1 + 2j, "sé\ud800", b"\x00\xff", (1, [2.5, "a"]),
              {1, (2, 3)}, frozenset({"x"}), {"k": [None, {"n": 1}]}, collections.Counter({"a": 2, "b": 1}),
              np.float32(0.5), np.int8(-3), np.bool_(True), np.str_("s"), np.complex128(1j), [math.inf, -math.inf]]
    programs = [("same", "def f(i):\n    return EXPECTED[i]", True),
                ("nan", "def f(i):\n    return float('nan') if i == 0 else EXPECTED[i]", False),
                ("tuple for list", "def f(i):\n    v = EXPECTED[i]\n    return tuple(v) if type(v) is list else v",
                 False),
                ("dict for Counter", "import collections\n"
                                     "def f(i):\n    v = EXPECTED[i]\n    return dict(v) if type(v) is collections.Counter else v",
                 True)]
    inputs = [[i] for i in range(len(values))]
    pool.add_task("values", {"entry_point": "f", "oracle": None, "atol": 0, "base_input": inputs,
                             "base_expected": values, "base_limits": [1.0] * len(values)})
    prelude = ("import collections, math\nimport numpy as np\nEXPECTED = [None, True, 2 ** 100, -(2 ** 70), 1.5, math.inf,"
               " -0.0, 1 + 2j, 'sé\\ud800', b'\\x00\\xff', (1, [2.5, 'a']), {1, (2, 3)}, frozenset({'x'}), "
               "{'k': [None, {'n': 1}]}, collections.Counter({'a': 2, 'b': 1}), np.float32(0.5), np.int8(-3), "
               "np.bool_(True), np.str_('s'), np.complex128(1j), [math.inf, -math.inf]]\n")
    res = {r.id: r for r in pool.run([Job(name, "plus", prelude + code, 2.0, "values", "base")
                                      for name, code, _ in programs])}
    for name, _, passes in programs:
        assert res[name].passed == passes, (name, res[name])
    assert res["same"].tests == len(values)
    assert res["tuple for list"].failed_test == 20 and res["nan"].failed_test == 0


def test_plus_nan_fails_as_under_evalplus(pool):
    """An output holding a NaN is not equal to an expected one holding it (nan != nan, and numpy.allclose's
    equal_nan is off in evalplus), though their encodings are the same bytes; a NaN where the tolerance applies
    fails too. Twice: the second time the worker knows the expected output holds a NaN (HiddenOutputs.same)."""
    pool.add_task("nan", {"entry_point": "f", "oracle": None, "atol": 1e-6, "base_input": [[0], [1], [2]],
                          "base_expected": [1.5, [1.0, float("nan")], float("nan")], "base_limits": [1.0] * 3})
    jobs = [Job(("first", 0), "plus", "def f(i):\n    return [1.5, [1.0, float('nan')], 0.0][i]", 2.0, "nan", "base"),
            Job(("second", 0), "plus", "def f(i):\n    return [1.5, [1.0, float('nan')], 0.0][i]", 2.0, "nan",
                "base"),
            Job(("nan for a number", 0), "plus", "def f(i):\n    return float('nan')", 2.0, "nan", "base")]
    res = {r.id[0]: r for r in pool.run(jobs)}
    assert res["first"].failed_test == 1 and res["second"].failed_test == 1, res
    assert res["nan for a number"].failed_test == 0


def test_plus_outputs_too_big_to_send_are_compared_by_digest(pool):
    """An output of more than values.MAX_ITEMS values travels as the SHA-256 of its encoding: equal to an expected
    one of the same values and types (kept the same way by the worker), and to nothing else."""
    big = 10_000_001
    pool.add_task("big", {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[1], [2]],
                          "base_expected": [[7] * big, (1, [2] * big)], "base_limits": [5.0, 5.0]})
    programs = {"right": ("def f(x):\n    return [7] * 10_000_001 if x == 1 else (1, [2] * 10_000_001)", True),
                "one value off": ("def f(x):\n    v = [7] * 10_000_001\n    v[-1] = 8\n    return v", False),
                "a tuple for the list": ("def f(x):\n    return (7,) * 10_000_001", False),
                "floats for ints": ("def f(x):\n    return [7.0] * 10_000_001", False)}
    res = {r.id: r for r in pool.run([Job(name, "plus", code, 10.0, "big", "base")
                                      for name, (code, _) in programs.items()])}
    for name, (_, passes) in programs.items():
        assert res[name].passed == passes, (name, res[name])
    assert res["right"].tests == 2 and res["one value off"].failed_test == 0


def codec_values():
    import collections
    import math

    np = pytest.importorskip("numpy")
    deep = []
    for _ in range(150):
        deep = [deep]

    class Sub(float):
        pass
    return [None, True, False, 0, -1, 2 ** 63 - 1, -(2 ** 63), 2 ** 63, -(2 ** 63) - 1, 2 ** 300, -(2 ** 64), 1.5,
            math.nan, [1, (2, {3: complex(0, math.nan)})], np.float32("nan"), -math.inf, -0.0, 2 - 3j, "", "h\u00e9llo\ud800\U0001f600", b"\x00b", [1, [2, (3,)]], (), {1, 2},
            frozenset({"a"}), {"a": [1], 2: None, (1, 2): frozenset()}, collections.Counter({1: 2}), np.float64(1.5),
            np.int32(3), np.bool_(True), np.longlong(5), np.str_("x"), np.bytes_(b"y"), np.complex64(1 + 2j),
            np.float16(2), np.longdouble(1) / 3, deep, [object()], np.array([1]), collections.OrderedDict(),
            np.datetime64(1, "D"), Sub(1), [Sub(1)], {1: object()}, [[]] * 10]


def test_codec_matches_its_reference():
    """_sandbox.encode/decode give the bytes and values of values.py's references; what cannot be sent (a subclass,
    a foreign object, an array, too deep, past the item budget) is None from both; values come back of their exact
    types."""
    from wizardcoder import _sandbox
    from wizardcoder.eval import values

    leaves = values.numpy_scalar_types()
    encode, decode = values.encoder(leaves), values.decoder(leaves)
    assert encode is not values.encode_reference and hasattr(_sandbox, "decode")
    sent, digest, with_nan = 0, values.digester(leaves), values.nan_encoder(leaves)
    for v in codec_values():
        data = encode(v)
        assert data == values.encode_reference(v, leaves=leaves), v
        assert digest(v) == values.digest_reference(v, leaves), v
        assert with_nan(v) == values.encode_nan_reference(v, leaves=leaves), v
        if data is None:
            continue
        sent += 1
        for back in (decode(data), values.decode_reference(data, leaves=leaves)):
            assert type(back) is type(v) and repr(back) == repr(v), (v, back)
            assert encode(back) == data
    assert sent == 37
    assert encode(list(range(100))) is not None
    assert values.encoder(leaves, 50)(list(range(100))) is None  # past its item budget
    assert values.encode_reference(list(range(100)), 50, leaves) is None


MALFORMED = [b"", b"x", b"i\x00", b"NN", b"l\xff\xff\xff\xff", b"s\x05\x00\x00\x00ab", b"s\x01\x00\x00\x00\xff",
             b"S\x01\x00\x00\x00l\x00\x00\x00\x00", b"d\x01\x00\x00\x00l\x00\x00\x00\x00N", b"n\xc8\x00\x00\x00\x00",
             b"n\x07\x03\x00\x00\x00abc", b"I\xff\xff\xff\x7f", b"l\x01\x00\x00\x00" * 200 + b"N",
             b"d\xff\xff\xff\x7f" + b"N" * 100]


@pytest.mark.parametrize("data", MALFORMED)
def test_decode_refuses_malformed_data(data):
    from wizardcoder.eval import values

    leaves = values.numpy_scalar_types()
    for decode in (values.decoder(leaves), lambda d: values.decode_reference(d, leaves=leaves)):
        with pytest.raises(ValueError):
            decode(data)


def test_decode_agrees_with_its_reference_on_mutated_data():
    """Random single-byte changes of real encodings: the C decoder and the reference agree on every one (the same
    value of the same type, or both refuse it), and neither crashes."""
    import random

    from wizardcoder.eval import values

    leaves = values.numpy_scalar_types()
    encode, decode = values.encoder(leaves), values.decoder(leaves)
    rng = random.Random(0)
    blobs = [b for b in map(encode, codec_values()) if b is not None]
    for _ in range(3000):
        b = bytearray(rng.choice(blobs))
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        got = []
        for f in (decode, lambda d: values.decode_reference(d, leaves=leaves)):
            try:
                v = f(bytes(b))
                got.append((type(v), repr(v)))
            except ValueError:
                got.append(ValueError)
        assert got[0] == got[1], (bytes(b), got)


# ------------------------------------------------------------------------------------------ malformed reports

@pytest.mark.parametrize("raw,want", [
    (b'{"status": "failed", "error": ["a", "list"]}', "crashed"),
    (b'{"status": "failed", "error": {"a": "dict"}}', "crashed"),
    (b'{"status": "failed", "error": "x", "seconds": NaN}', "crashed"),  # NaN is not JSON
    (b'{"status": "passed", "seconds": "soon"}', "passed"),
    (b'{"status": "failed", "failed_test": true}', "crashed"),
    (b'{"status": "failed", "failed_test": -1}', "crashed"),
    (b'{"status": "won"}', "crashed"),
    (b'[1, 2]', "crashed"),
    (b'\xff\xfe', "crashed"),
    (b'[' * 100000, "crashed"),
])
def test_verdict_fields_are_validated(raw, want):
    got = verdict_fields(raw)
    assert got["status"] == want, got
    assert set(got) <= {"status", "error", "failed_test", "tests"}  # never the program's `seconds`


def test_a_huge_error_is_cut():
    got = verdict_fields(json.dumps({"status": "failed", "error": "E" * (1 << 20)}).encode())
    assert got["status"] == "failed" and len(got["error"]) == MAX_ERROR


def write_dataset(path):
    row = {"task_id": "HumanEval/0", "prompt": "def inc(x):\n", "entry_point": "inc",
           "canonical_solution": "    return x + 1\n", "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    path.write_text(json.dumps(row) + "\n")


BAD_REPORTS = {  # what a program wrote on fd 3 (before the fix, taken as its verdict)
    "list error": '{"status": "failed", "error": ["a"]}',
    "dict error": '{"status": "failed", "error": {"a": 1}}',
    "NaN seconds": '{"status": "failed", "error": "x", "seconds": NaN}',
    "1 MB error": json.dumps({"status": "failed", "error": "E" * (1 << 20)}),
}


def strict_json(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in the output"))


def test_malformed_reports_fail_alone_and_resume(tmp_path, capsys):
    """Programs that write malformed verdicts, and one whose exception's name is 1 MB: the run ends with a summary,
    the correct samples pass, the bad ones fail, nothing unbounded or non-JSON is written; a results.jsonl holding
    such rows (a run of an older version) is scored again on resume."""
    data, samples, out = tmp_path / "data.jsonl", tmp_path / "s.jsonl", tmp_path / "out"
    write_dataset(data)
    body = "    return x + 1\n"
    programs = {name: f"import os\nos.write(3, {report!r}.encode())\nos._exit(0)"
                for name, report in BAD_REPORTS.items()}
    programs["1 MB exception name"] = "raise type('E' * (1 << 20), (Exception,), {})()"
    rows = [{"task_id": "HumanEval/0", "completion": body}]
    rows += [{"task_id": "HumanEval/0", "completion": body + code} for code in programs.values()]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["evaluate", "--task", "humaneval", "--samples", str(samples), "--data", str(data), "--out", str(out),
            "--workers", "2", "--no-progress", "--k", "1"]
    assert main(args) == 0
    results = [strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in results] == [True] + [False] * len(programs)
    summary_text = (out / "summary.json").read_text()
    summary = strict_json(summary_text)
    assert max(len(k) for k in summary["failures"]) <= 100
    assert all(len(r["error"]) <= MAX_ERROR for r in results)

    # an older version's rows: a list as error, NaN seconds, a 1 MB error; resuming scores those samples again
    results[1]["error"] = ["a"]
    results[2]["seconds"] = float("nan")
    results[3]["error"] = "E" * (1 << 20)
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    capsys.readouterr()
    assert main(args) == 0
    again = [strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["passed"] for r in again] == [True] + [False] * len(programs)
    assert all(isinstance(r["error"], str) and len(r["error"]) <= MAX_ERROR for r in again)


# ------------------------------------------------------------------------------------------ the evaluator's limits

@pytest.mark.parametrize("flags,message", [
    (["--workers", "100000"], "--workers 100000: at most"),
    (["--timeout", "1e10"], "--timeout 10000000000.0: at most 3600 CPU seconds per program"),
])
def test_workers_and_timeout_are_bounded(tmp_path, capsys, flags, message):
    data, samples, out = tmp_path / "data.jsonl", tmp_path / "s.jsonl", tmp_path / "out"
    write_dataset(data)
    samples.write_text(json.dumps({"task_id": "HumanEval/0", "completion": "    return x + 1\n"}) + "\n")
    assert main(["evaluate", "--task", "humaneval", "--samples", str(samples), "--data", str(data), "--out", str(out),
                 "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_pool_workers_are_bounded():
    from wizardcoder.errors import ConfigError

    with pytest.raises(ConfigError, match="at most"):
        SandboxPool(100000)


def test_plus_workers_hold_no_numpy_unless_a_program_brings_it():
    """A worker holding numpy made every program's fork ~0.5 ms dearer: the + tasks' workers do not import it, not for
    their expected outputs nor for a float compared within its tolerance (compare._allclose); a program that returns
    numpy scalars still gets evalplus's verdict (the worker imports numpy to decode them, then)."""
    no_numpy = "import sys\nassert 'numpy' not in sys.modules, 'numpy in the worker'\n"
    with SandboxPool(1, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        p.add_task("t", dict(PLUS_TASK))
        p.add_task("floats", dict(FLOAT_TASK))
        jobs = [Job("first", "plus", no_numpy + CORRECT, 2.0, "t", "base"),
                Job("close", "plus", no_numpy + "def f(x):\n    return 0.5 / x + 1e-9", 2.0, "floats", "base"),
                Job("after", "plus", no_numpy + CORRECT, 2.0, "t", "base"),
                Job("numpy", "plus", "import numpy as np\ndef f(x):\n    return np.float64(0.5) / x", 2.0, "floats",
                    "base")]
        got = {r.id: (r.status, r.error) for r in p.run(jobs)}
    assert got == {k: ("passed", "") for k in ("first", "close", "after", "numpy")}, got


@pytest.mark.parametrize("out, exp", [
    (0.5, 0.5), (0.5 + 1e-7, 0.5), (0.5 + 1e-5, 0.5), (1e300, 1e300 * (1 + 1e-8)), (-0.0, 0.0), (3, 3), (3, 4),
    (True, 1), (float("inf"), float("inf")), (float("inf"), float("-inf")), (float("nan"), float("nan")),
    (1.0, float("nan")), (float("inf"), 1e308), (2 ** 53, 2 ** 53), (10 ** 30, 10 ** 30),
    ([0.1, 0.2, 0.3], [0.1, 0.2, 0.30000001]), ([0.1, 0.2], [0.1, 0.2002]), ((1.0, 2), (1.0, 2.0000001)), ([], []),
    ([1, 2 ** 60], [1.0, 2.0 ** 60]), ([True, 1.0], [1.0, 1.0]), ([[1.0]], [[1.0]]), ([1.0, float("nan")], [1.0, 2.0]),
    ([float("inf"), 1.0], [float("inf"), 1.0]), (1 + 2j, 1 + 2j), ("a", "a"),
])
@pytest.mark.parametrize("atol", [1e-6, 0.01, 1.0])
def test_allclose_without_numpy_is_numpys(out, exp, atol):
    """compare._allclose gives np.allclose's answer where it answers (None: left to numpy)."""
    import numpy as np

    from wizardcoder.eval.compare import _allclose

    ours = _allclose(out, exp, 1e-07, atol)
    try:
        theirs = bool(np.allclose(out, exp, rtol=1e-07, atol=atol))
    except Exception as e:  # noqa: BLE001 - an exception in the check fails the input either way
        theirs = type(e)
    if ours is not None:
        assert ours == theirs, (out, exp, atol)
    simple = type(exp) in (int, float, bool) or (type(exp) in (list, tuple) and all(
        (type(v) is float or (type(v) is int and abs(v) <= 2 ** 53)) for v in [*out, *exp]))
    assert (ours is not None) == simple, (out, exp)


def test_a_tasks_data_is_loaded_once_for_all_workers():
    """Every worker running a problem's jobs needs its data: it is loaded and pickled once (pool._Tasks), not once per
    worker (for the + tasks that was a third of the evaluator's CPU)."""
    loads = []

    def data():
        loads.append(1)
        return dict(PLUS_TASK)

    with SandboxPool(3, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        p.add_task("t", data)
        res = list(p.run([Job(i, "plus", "import time\ntime.sleep(0.2)\n" + CORRECT, 2.0, "t", "base")
                          for i in range(6)]))
        served = sum("t" in h.loaded for h in p.handles)
    assert [r.status for r in res] == ["passed"] * 6
    assert served >= 2 and len(loads) == 1, (served, len(loads))


def test_plus_jobs_in_the_c_loop_decide_as_the_python_reference(monkeypatch):
    """The worker's C loop (sandbox.Worker.receive) runs plus jobs up to their comparison's verdict: every program
    here, hostile or honest, gets the same reply from it as from Worker.run_job (WIZARDCODER_SANDBOX_REFERENCE=1)."""
    keys = {id(PLUS_TASK): "t", id(FLOAT_TASK): "floats"}
    programs = {**{k: ("t", v) for k, v in PLUS_HOSTILE.items()},
                **{k: (keys[id(task)], v) for k, (task, v) in HONEST.items()},
                "forged with ctypes": ("t", FORGE_WITH_CTYPES), "patched allclose": ("floats", PATCH_ALLCLOSE),
                "endless": ("t", "def f(x):\n    while True:\n        pass"),
                "killed": ("t", "import os, signal\ndef f(x):\n    os.kill(os.getpid(), signal.SIGSEGV)")}

    def replies(reference: bool) -> dict:
        if reference:
            monkeypatch.setenv("WIZARDCODER_SANDBOX_REFERENCE", "1")
        else:
            monkeypatch.delenv("WIZARDCODER_SANDBOX_REFERENCE", raising=False)
        with SandboxPool(1, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
            p.add_task("t", dict(PLUS_TASK))
            p.add_task("floats", dict(FLOAT_TASK))
            jobs = [Job(name, "plus", code, 3.0, key, "base") for name, (key, code) in programs.items()]
            return {r.id: (r.status, r.error, r.failed_test, r.tests) for r in p.run(jobs)}

    ours, reference = replies(False), replies(True)
    assert ours == reference
    assert {k for k, v in ours.items() if v[0] == "passed"} == set(HONEST), ours


def test_a_plus_tasks_runner_is_each_programs_own():
    """A + task's child half (checks.plus_runner: its inputs, the input it is at, its unsent outputs) is made once in
    the worker and every program runs on its own copy: one that empties the inputs through the runner's frame, and
    one that fails at its third input, leave the task's next programs as they were."""
    task = {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[1], [2], [3], [4]],
            "base_expected": [1000010, 2000013, 3000016, 4000019], "base_limits": [1.0] * 4}
    tamper = ("import sys\ndef f(x):\n    sys._getframe(1).f_locals['inputs'].clear()\n"
              "    return x * 1000003 + 7")
    wrong = "def f(x):\n    return x * 1000003 + (8 if x == 3 else 7)"
    order = [CORRECT, tamper, CORRECT, wrong, CORRECT, wrong, CORRECT]
    with SandboxPool(1, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        p.add_task("t4", task)
        res = list(p.run([Job(i, "plus", code, 2.0, "t4", "base") for i, code in enumerate(order)]))
    assert [(r.status, r.tests) for r in res[::2]] == [("passed", 4)] * 4, res
    assert res[1].status != "passed" and "ended before the last input" in res[1].error, res[1]
    assert [(r.status, r.failed_test) for r in res[3::2]] == [("failed", 2)] * 2, res


def test_each_tasks_jobs_go_to_about_one_worker():
    """Jobs with task data go by task (SandboxPool.run): a worker takes the jobs of tasks it holds, then of a task no
    other worker holds, so each problem's data is sent to and held by about one worker, not by every worker."""
    with SandboxPool(3, SandboxConfig(timeout=2.0, memory=512 << 20)) as p:
        for t in range(6):
            p.add_task(f"t{t}", dict(PLUS_TASK))
        res = list(p.run([Job((t, i), "plus", "import time\ntime.sleep(0.02)\n" + CORRECT, 2.0, f"t{t}", "base")
                          for t in range(6) for i in range(8)]))
        loads = sum(len(h.loaded) for h in p.handles)
    assert all(r.passed for r in res) and len(res) == 48
    assert loads <= 6 + 2, loads  # each task once, but for the last ones shared out at the end


def test_plus_limits_are_per_input():
    """Each input has its own CPU limit (evalplus's per-input time limit, here in CPU seconds): inputs that each stay
    under it pass however long they take together, and the first input over it fails the job as a timeout there."""
    task = {"entry_point": "f", "oracle": None, "atol": 0, "base_input": [[0], [1], [2]], "base_expected": [0, 1, 2],
            "base_limits": [1.0, 1.0, 1.0]}
    spin = ("import time\ndef f(x):\n    t = time.process_time()\n    while time.process_time() - t < {}:\n"
            "        pass\n    return x\n")
    with SandboxPool(1, SandboxConfig(timeout=10.0, memory=512 << 20)) as p:
        p.add_task("slow", task)
        under, over = (Job(name, "plus", code, 10.0, "slow", "base") for name, code in
                       [("under", spin.format(0.6)), ("over", spin.format("(1.5 if x == 2 else 0.05)"))])
        got = {r.id: r for r in p.run([under, over])}
    assert got["under"].status == "passed", got["under"]
    assert (got["over"].status, got["over"].failed_test) == ("timeout", 2), got["over"]
    assert "per-test time limit" in got["over"].error
