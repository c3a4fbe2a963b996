"""The code Evol-Instruct prompts: one template, five methods, one method drawn per instruction and round.

WizardCoder (Luo et al. 2023, section 3) streamlines WizardLM's Evol-Instruct for code into a single template

    Please increase the difficulty of the given programming test question a bit.

    You can increase the difficulty using, but not limited to, the following methods:
    {method}

    {question}

with one of five methods in `{method}`. nickrosh/evol-teacher (the source of the public evolved rounds in
../shared/data/evol_instruct_code) wraps the question as `#Given Test#\\n{question}\\n\\n#Rewritten Test#\\n`; both
wordings are here as named templates ("wizardcoder", "evol-teacher").

The method is a pure function of (seed, instruction id, round): the same run draws the same methods whatever order the
requests complete in, and a resumed run draws what the killed one drew.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os

from ..errors import ConfigError
from ..io import read_json

# The five code methods, worded as in the paper and evol-teacher's generate_evol.py.
CODE_METHODS: dict[str, str] = {
    "constraints":
        "Add new constraints and requirements to the original problem, adding approximately 10 additional words.",
    "less_common":
        "Replace a commonly used requirement in the programming task with a less common and more specific one.",
    "reasoning":
        "If the original problem can be solved with only a few logical steps, please add more reasoning steps.",
    "erroneous_code": "Provide a piece of erroneous code as a reference to increase misdirection.",
    "complexity": "Propose higher time or space complexity requirements, but please refrain from doing so frequently.",
}

TEMPLATES: dict[str, str] = {
    "wizardcoder": (
        "Please increase the difficulty of the given programming test question a bit.\n\n"
        "You can increase the difficulty using, but not limited to, the following methods:\n"
        "{method}\n\n"
        "{question}"
    ),
    "evol-teacher": (
        "Please increase the difficulty of the given programming test question a bit.\n\n"
        "You can increase the difficulty using, but not limited to, the following methods:\n"
        "{method}\n\n"
        "#Given Test#\n{question}\n\n#Rewritten Test#\n"
    ),
}

# WizardLM's elimination step 1 asks the model whether the evolved instruction adds information over its parent
# (Xu et al. 2023, appendix: "Here are two Instructions ... do you think they are equal to each other ...").
EQUALITY_TEMPLATE = (
    "Here are two Instructions to ChatGPT AI, do you think they are equal to each other, "
    "which meet the following requirements:\n"
    "1. They have same constraints and requirements.\n"
    "2. They have same depth and breadth of the inquiry.\n"
    "The First Prompt: {first}\n"
    "The Second Prompt: {second}\n"
    "Your Judgement (Just answer: Equal or Not Equal. No need to explain the reason.):"
)

# Words of the evolution prompt that must not leak into an evolved instruction (WizardLM's rule 4 names
# "given prompt", "rewritten prompt" and "#Rewritten Prompt#"; the code template's own markers are added).
COPY_MARKERS: tuple[str, ...] = (
    "#given prompt#",
    "#rewritten prompt#",
    "given prompt",
    "rewritten prompt",
    "#given test#",
    "#rewritten test#",
    "given test",
    "rewritten test",
    "increase the difficulty using, but not limited to",
    "programming test question a bit",
)


@dataclasses.dataclass
class EvolPrompts:
    """What the evolution step says to the model.

    template: a string with `{method}` and `{question}` fields.
    methods: name -> method text; one is drawn uniformly per (instruction, round).
    equality_template: a string with `{first}` and `{second}` (parent, evolved) for the LLM equality check.
    copy_markers: lower-case phrases from the prompt whose presence in an evolved instruction eliminates it.
    """

    template: str = TEMPLATES["wizardcoder"]
    methods: dict[str, str] = dataclasses.field(default_factory=lambda: dict(CODE_METHODS))
    equality_template: str = EQUALITY_TEMPLATE
    copy_markers: tuple[str, ...] = COPY_MARKERS

    def __post_init__(self):
        if not self.methods:
            raise ConfigError("evolution prompts: `methods` is empty; give at least one method.")
        for field in ("{method}", "{question}"):
            if field not in self.template:
                raise ConfigError(f"evolution template lacks the {field} field; put it where it belongs.")
        for field in ("{first}", "{second}"):
            if field not in self.equality_template:
                raise ConfigError(f"equality template lacks the {field} field.")
        self.copy_markers = tuple(m.lower() for m in self.copy_markers)

    @classmethod
    def named(cls, name: str) -> "EvolPrompts":
        if name not in TEMPLATES:
            raise ConfigError(f"--prompts {name!r}: unknown; use one of {sorted(TEMPLATES)} or a JSON file.")
        return cls(template=TEMPLATES[name])

    @classmethod
    def from_file(cls, path: str) -> "EvolPrompts":
        """Load a JSON object with any of `template`, `methods` (a dict name -> text, or a list of texts),
        `add_methods` (methods added to the five code methods), `equality_template`, `copy_markers`."""
        obj = read_json(path, "prompts file (--prompts)", ConfigError, "fix the prompts file")
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}: expected a JSON object with `template` and/or `methods`.")
        unknown = set(obj) - {"template", "methods", "add_methods", "equality_template", "copy_markers"}
        if unknown:
            raise ConfigError(f"{path}: unknown field(s) {sorted(unknown)}; allowed: template, methods, add_methods, "
                              "equality_template, copy_markers.")
        template = obj.get("template", TEMPLATES["wizardcoder"])
        template = TEMPLATES.get(template, template)  # a template name is fine too
        methods = _as_methods(obj.get("methods", CODE_METHODS), path, "methods")
        methods.update(_as_methods(obj.get("add_methods", {}), path, "add_methods"))
        return cls(template=template, methods=methods,
                   equality_template=obj.get("equality_template", EQUALITY_TEMPLATE),
                   copy_markers=tuple(obj.get("copy_markers", COPY_MARKERS)))

    def add_method(self, name: str, text: str) -> None:
        self.methods[name] = text

    @property
    def method_names(self) -> list[str]:
        return list(self.methods)

    def draw_method(self, seed: int, instruction_id: str, round_: int) -> str:
        """The method name for this instruction in this round: uniform over `methods`, a pure function of the
        arguments (a hash, not a shared RNG), so completion order and restarts cannot change it."""
        h = hashlib.sha256(f"{seed}\x00{instruction_id}\x00{round_}".encode()).digest()
        return self.method_names[int.from_bytes(h[:8], "little") % len(self.methods)]

    def evolution_prompt(self, method: str, question: str) -> str:
        # str.replace, not str.format: questions are code and hold braces.
        return self.template.replace("{method}", self.methods[method]).replace("{question}", question)

    def equality_prompt(self, parent: str, evolved: str) -> str:
        return self.equality_template.replace("{first}", parent).replace("{second}", evolved)

    def fingerprint(self) -> str:
        blob = json.dumps([self.template, self.methods, self.equality_template, list(self.copy_markers)])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _as_methods(value, path: str, field: str) -> dict[str, str]:
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        return dict(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return {f"method_{i}": v for i, v in enumerate(value)}
    raise ConfigError(f"{path}: `{field}` must be a dict name -> text or a list of texts.")


def load_prompts(spec: str | None) -> EvolPrompts:
    """`spec` is a template name ("wizardcoder", "evol-teacher"), a JSON file, or None for the default."""
    if spec is None:
        return EvolPrompts()
    if spec in TEMPLATES:
        return EvolPrompts.named(spec)
    if os.path.exists(spec) or spec.endswith(".json"):
        return EvolPrompts.from_file(spec)
    raise ConfigError(f"--prompts {spec!r}: neither a template name ({', '.join(TEMPLATES)}) nor a JSON file.")
