"""Prompt templates: how an (instruction, input) pair becomes the prompt text the model is trained to continue.

The response follows the prompt directly and is closed by the tokenizer's EOS token. Only the response and that EOS
carry loss; every prompt token gets label -100.

`ALPACA` is WizardCoder's template, copied from its training code (nlpxucan/WizardLM,
WizardCoder/src/train_wizardcoder.py, `PROMPT_DICT`): the no-input variant for records without an `input` (or with an
empty one) and the with-input variant otherwise, exactly as `train_tokenize_function` chooses. There is no newline
or space after "### Response:"; whatever the response starts with follows the colon directly. The Llama-family
releases (WizardCoder-Python-7B/13B/34B-V1.0 on CodeLlama-Python, WizardCoder-33B-V1.1 on DeepSeek-Coder) use the
same prompt; what differs is their tokenizer's BOS before it (data/tokenize.py, docs/llama.md).

Add a template with `register_template(Template(...))`, or write one as a JSON file
`{"name": ..., "prompt_no_input": "...{instruction}...", "prompt_input": "...{instruction}...{input}..."}` and pass
its path wherever a template name is taken.
"""
from __future__ import annotations

import hashlib
import json
import os
import string
from dataclasses import asdict, dataclass

from ..errors import ConfigError
from ..io import read_json


@dataclass(frozen=True)
class Template:
    """A prompt format. `prompt_no_input` must contain `{instruction}`; `prompt_input` (optional) must contain
    `{instruction}` and `{input}` and is used when a record has a non-empty `input`. Without `prompt_input`, a record's
    input is appended to its instruction after a blank line."""

    name: str
    prompt_no_input: str
    prompt_input: str | None = None

    def __post_init__(self):
        _check_fields(self.name, "prompt_no_input", self.prompt_no_input, {"instruction"})
        if self.prompt_input is not None:
            _check_fields(self.name, "prompt_input", self.prompt_input, {"instruction", "input"})

    def prompt(self, instruction: str, input: str = "") -> str:
        """The prompt text for one record (format_map, as the reference code does: braces inside the instruction
        are left alone)."""
        if input:
            if self.prompt_input is not None:
                return self.prompt_input.format_map({"instruction": instruction, "input": input})
            instruction = f"{instruction}\n\n{input}"
        return self.prompt_no_input.format_map({"instruction": instruction})

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sha256"] = hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()
        return d


def _check_fields(name: str, key: str, text: str, required: set[str]) -> None:
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as e:
        raise ConfigError(f"template {name!r}: {key} is not a valid format string ({e}); double literal braces.") from None
    if fields != required:
        raise ConfigError(
            f"template {name!r}: {key} must use exactly the fields {sorted(required)}, found {sorted(fields)}."
        )


ALPACA = Template(
    name="alpaca",
    prompt_no_input=(
        "Below is an instruction that describes a task. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Response:"
    ),
    prompt_input=(
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
    ),
)

TEMPLATES: dict[str, Template] = {"alpaca": ALPACA, "wizardcoder": ALPACA}


def register_template(template: Template, overwrite: bool = False) -> Template:
    if template.name in TEMPLATES and not overwrite and TEMPLATES[template.name] != template:
        raise ConfigError(f"a template named {template.name!r} already exists; pick another name or pass overwrite=True.")
    TEMPLATES[template.name] = template
    return template


def get_template(name_or_path: str | Template) -> Template:
    """A registered template by name, or one loaded from a JSON file."""
    if isinstance(name_or_path, Template):
        return name_or_path
    if name_or_path in TEMPLATES:
        return TEMPLATES[name_or_path]
    if os.path.isfile(name_or_path):
        d = read_json(name_or_path, "template file", ConfigError, "give a JSON object")
        if not isinstance(d, dict) or not isinstance(d.get("prompt_no_input"), str):
            raise ConfigError(f"{name_or_path}: a template file needs a string field 'prompt_no_input'.")
        return Template(
            name=str(d.get("name") or os.path.splitext(os.path.basename(name_or_path))[0]),
            prompt_no_input=d["prompt_no_input"],
            prompt_input=d.get("prompt_input"),
        )
    raise ConfigError(f"unknown template {name_or_path!r}; use one of {sorted(TEMPLATES)} or a path to a JSON template.")
