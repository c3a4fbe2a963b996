"""Prompt formats per task, for generating samples.

- `wizardcoder`: WizardCoder's Alpaca prompt, exactly as its generation scripts build it (nlpxucan/WizardLM,
  WizardCoder/src/humaneval_gen.py, mbpp_gen.py, mbppplus_gen.py): the instruction is "Create a Python script for
  this problem:" and the HumanEval prompt; for MBPP the problem text, "Test examples:" and the asserts; for MBPP+ the
  instruction of WizardCoder's mbppplus.json (rebuilt here from the MBPP+ prompt: the text, "Your code should satisfy
  the following assertion:" and the assert in a python block), or the file itself with `instructions=`. As in those
  scripts, four spaces in the input become a tab (the model's answer gets them back in post-processing). The answer
  is a `response`.
- `plain`: plain completion for base models: the HumanEval / MBPP+ code prompt, for MBPP a docstring with the text
  and first assert; the answer is a `completion` cut at the usual stop sequences.
"""
from __future__ import annotations

from .tasks import MBPP_LONG_TEST, Problem

STYLES = ("wizardcoder", "plain")
ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the request."
          "\n\n### Instruction:\n{instruction}\n\n### Response:")
# Codex / bigcode-evaluation-harness stops for function completion
PLAIN_STOP = ["\nclass", "\ndef", "\n#", "\nif", "\nprint"]


def alpaca(instruction: str) -> str:
    return ALPACA.format(instruction=instruction)


def mbpp_instruction_input(problem: Problem) -> str:
    """mbpp_gen.py's input: newline, text, "Test examples:", one assert per line (task 493: the call only)."""
    prompt = f"\n{problem.text}\nTest examples:"
    if int(problem.task_id) in MBPP_LONG_TEST:
        prompt += f"\n{MBPP_LONG_TEST[int(problem.task_id)]}"
    else:
        for test in problem.tests:
            prompt += f"\n{test}"
    return prompt


def mbppplus_instruction(problem: Problem) -> str:
    """The MBPP+ instruction of WizardCoder's mbppplus.json, rebuilt from the docstring prompt."""
    body = problem.prompt.strip()
    if body.startswith('"""') and body.endswith('"""'):
        body = body[3:-3].strip()
    lines = body.split("\n")
    k = next((i for i, line in enumerate(lines) if line.lstrip().startswith("assert")), len(lines))
    text, asserts = "\n".join(lines[:k]).strip(), "\n".join(lines[k:]).strip()
    if not text.endswith("."):
        text += "."
    return f"{text} Your code should satisfy the following assertion:\n```python\n{asserts}\n```"


def build_prompt(task: str, problem: Problem, style: str = "wizardcoder",
                 instructions: dict | None = None) -> str:
    if style == "wizardcoder":
        if task in ("humaneval", "humaneval+"):
            return alpaca("Create a Python script for this problem:\n" + problem.prompt.replace("    ", "\t"))
        if task == "mbpp":
            return alpaca("Create a Python script for this problem:\n"
                          + mbpp_instruction_input(problem).replace("    ", "\t"))
        if task == "mbpp+":
            text = (instructions or {}).get(problem.task_id) or mbppplus_instruction(problem)
            return alpaca(text.replace("    ", "\t"))
        return alpaca(problem.prompt)  # ds1000: its own prompt is the instruction
    if style == "plain":
        if task == "mbpp":
            return f'"""\n{problem.text}\n{problem.tests[0]}\n"""\n'
        return problem.prompt
    raise ValueError(f"unknown prompt style {style!r}; choose one of {', '.join(STYLES)}")


def stop_sequences(task: str, style: str) -> list[str]:
    if style == "plain" and task != "ds1000":
        return list(PLAIN_STOP)
    if task == "ds1000":
        return ["</code>", "# SOLUTION END"]
    return []
