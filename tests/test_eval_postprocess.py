"""Post-processing (WizardCoder's rules, DS-1000's, the sanitizer) and prompt formats, against the upstream
strings and scripts they reproduce."""
import json
import os

import pytest

from wizardcoder.benchmarks.mbpp import mbppplus_instruction
from wizardcoder.eval.postprocessing import ds1000, longest_parsable_prefix, sanitize
from wizardcoder.benchmarks import get_benchmark

HUMANEVAL, MBPP, MBPPPLUS, DS1000 = (get_benchmark(t) for t in ("humaneval", "mbpp", "mbpp+", "ds1000"))


def wizardcoder(text, task):
    return get_benchmark(task).postprocess(text, None, "wizardcoder")


RESPONSE = (
    "Here is a Python script that solves the problem:\r\n\r\n"
    "```python\r\n"
    "from typing import List\r\n\r\n"
    "def has_close_elements(numbers: List[float], threshold: float) -> bool:\r\n"
    "\tfor i, a in enumerate(numbers):\r\n"
    "\t\tfor b in numbers[i + 1:]:\r\n"
    "\t\t\tif abs(a - b) < threshold:\r\n"
    "\t\t\t\treturn True\r\n"
    "\treturn False\r\n\r\n"
    "# Example usage\r\n"
    "print(has_close_elements([1.0, 2.0], 0.5))\r\n"
    "```\r\n\r\n"
    "The function compares every pair."
)


def test_wizardcoder_humaneval_rules():
    code = wizardcoder(RESPONSE, "humaneval")
    assert code == ("from typing import List\n\ndef has_close_elements(numbers: List[float], threshold: float) -> bool:\n"
                    "    for i, a in enumerate(numbers):\n        for b in numbers[i + 1:]:\n"
                    "            if abs(a - b) < threshold:\n                return True\n    return False")
    # main guard cut; no python block: the text is kept as is
    text = 'def f():\n    return 1\n\nif __name__ == "__main__":\n    print(f())'
    assert wizardcoder(text, "humaneval") == "def f():\n    return 1"
    # an unclosed block keeps everything after the fence (WizardCoder counts these)
    assert wizardcoder("```python\ndef f():\n    return 2\n", "humaneval") == "\ndef f():\n    return 2"


def test_wizardcoder_mbpp_rules():
    text = ("```python\ndef add(a, b):\n    return a + b\n\n# Test examples\nprint(add(1, 2))\n```\n")
    assert wizardcoder(text, "mbpp") == "def add(a, b):\n    return a + b"
    # MBPP+ also cuts at the first assert
    text = "```python\ndef add(a, b):\n    return a + b\nassert add(1, 2) == 3\n```"
    assert wizardcoder(text, "mbpp+") == "def add(a, b):\n    return a + b"
    # MBPP's closing fence rule is "\n```" (a fence inside a line is kept)
    text = "```python\ns = '```'\ndef f():\n    return s\n```"
    assert wizardcoder(text, "mbpp") == "s = '```'\ndef f():\n    return s"
    assert wizardcoder(text, "humaneval") == "s = '"


def test_ds1000_postprocess():
    assert ds1000("result = a.sum()\n</code>\nEND SOLUTION") == "result = a.sum()\n"
    assert ds1000("```python\nresult = a.sum()\n```\ntext") == "\nresult = a.sum()\n"
    assert ds1000("<code>\nresult = 1\nEND SOLUTION\n</code>") == "\nresult = 1"
    assert DS1000.postprocess("x = 1\n</code>") == "x = 1\n"
    assert DS1000.postprocess("x = 1\n</code>", None, "sanitize") == "x = 1\n"  # snippets are not definitions


def test_sanitizer_keeps_what_the_entry_point_reaches():
    text = (
        "Sure! Here you go:\n```python\nimport math\nfrom collections import Counter\n\nLIMIT = 10\n\n"
        "def helper(x):\n    return math.sqrt(x) + LIMIT\n\ndef unused():\n    return 42\n\n"
        "class Box:\n    pass\n\n@staticmethod\ndef decorated():\n    return Box()\n\n"
        "def solve(x):\n    return helper(x) + len(Counter('ab'))\n\nprint(solve(4))\nassert solve(4) == 14\n\n"
        "if __name__ == '__main__':\n    solve(1)\n```\nHope this helps."
    )
    out = sanitize(text, "solve")
    assert out == ("import math\nfrom collections import Counter\nLIMIT = 10\ndef helper(x):\n"
                   "    return math.sqrt(x) + LIMIT\ndef solve(x):\n    return helper(x) + len(Counter('ab'))\n")
    env = {}
    exec(out, env)
    assert env["solve"](4) == 14.0
    # no entry point: all definitions, still no top-level statements
    out = sanitize(text, None)
    assert "def unused" in out and "@staticmethod\ndef decorated" in out and "print(" not in out


def test_sanitizer_survives_truncated_and_plain_text():
    truncated = "def f(x):\n    return x * 2\n\ndef g(x):\n    return f(x) +"
    assert longest_parsable_prefix(truncated) == "def f(x):\n    return x * 2\n"
    assert sanitize(truncated, "f") == "def f(x):\n    return x * 2\n"
    assert sanitize("I cannot help with that.", "f") == ""
    assert sanitize("\tdef f():\n\t\treturn 1", "f") == ""  # indented junk: nothing parses
    assert "def f" in sanitize("def f():\n\treturn 1", "f")


def test_none_passes_through():
    from wizardcoder.errors import ConfigError

    assert HUMANEVAL.postprocess("anything", None, "none") == "anything"
    with pytest.raises(ConfigError, match="unknown post-processing"):
        HUMANEVAL.postprocess("x", None, "bogus")


def test_sanitize_style_keeps_what_mbpps_asserts_call(shared_data):
    probs = MBPP.load(os.path.join(shared_data, "mbpp", "mbpp.jsonl"))
    p = probs["11"]  # remove_Occ: the asserts call it; the helper and the print are dropped
    assert MBPP.entry_point(p) == "remove_Occ"
    text = "```python\ndef other():\n    pass\n\ndef remove_Occ(s, ch):\n    return s\nprint(remove_Occ('a', 'a'))\n```"
    assert MBPP.postprocess(text, p, "sanitize") == "def remove_Occ(s, ch):\n    return s\n"


# ----------------------------------------------------------------------------------------------- prompts

@pytest.fixture(scope="module")
def humaneval(shared_data):
    return get_benchmark("humaneval").load(os.path.join(shared_data, "humaneval", "HumanEval.jsonl"))


def test_humaneval_prompt_is_wizardcoders(humaneval):
    p = humaneval["HumanEval/0"]
    prompt = HUMANEVAL.prompt(p)
    # humaneval_gen.py: generate_prompt(problem["prompt"].replace("    ", "\t"))
    assert prompt == ("Below is an instruction that describes a task. Write a response that appropriately completes "
                      "the request.\n\n### Instruction:\nCreate a Python script for this problem:\n"
                      + p.prompt.replace("    ", "\t") + "\n\n### Response:")
    assert HUMANEVAL.prompt(p, "plain") == p.prompt
    assert HUMANEVAL.stop_words("plain") == ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]
    assert HUMANEVAL.stop == []
    assert DS1000.stop == DS1000.stop_words("plain") == ["</code>", "# SOLUTION END"]


def test_mbpp_prompt_is_wizardcoders(shared_data):
    probs = get_benchmark("mbpp").load(os.path.join(shared_data, "mbpp", "mbpp.jsonl"))
    assert len(probs) == 500 and min(map(int, probs)) == 11 and max(map(int, probs)) == 510
    p = probs["11"]
    inner = f"\n{p.text}\nTest examples:\n" + "\n".join(p.raw["test_list"])
    assert MBPP.prompt(p) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\nCreate a Python script for this problem:\n" + inner.replace("    ", "\t")
        + "\n\n### Response:")
    # task 493's tests are too long: mbpp_gen.py shows the call only
    assert MBPP.prompt(probs["493"]).endswith(
        "Test examples:\ncalculate_polygons(startx, starty, endx, endy, radius)\n\n### Response:")
    assert MBPP.prompt(p, "plain") == f'"""\n{p.text}\n{p.raw["test_list"][0]}\n"""\n'


def test_mbppplus_instructions_match_wizardcoders_file(shared_data):
    """Our rebuilt instructions equal WizardCoder's mbppplus.json for all 399 MBPP+ v0.1.0 tasks."""
    with open(os.path.join(shared_data, "wizardcoder", "mbppplus_prompts.json")) as f:
        theirs = json.load(f)
    probs = get_benchmark("mbpp+").load(os.path.join(shared_data, "mbppplus", "MbppPlus-v0.1.0.jsonl.gz"))
    assert len(theirs) == 399
    assert all(mbppplus_instruction(probs[k]) == v for k, v in theirs.items())
    p = probs["Mbpp/2"]
    assert MBPPPLUS.prompt(p) == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n" + theirs["Mbpp/2"] + "\n\n### Response:")
    assert MBPPPLUS.prompt(p, "wizardcoder", {"Mbpp/2": "custom"}).count("custom") == 1
