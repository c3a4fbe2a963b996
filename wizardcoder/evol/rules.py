"""Elimination rules for evolved (instruction, answer) pairs, after WizardLM (Xu et al. 2023, section 3.3).

An evolution fails, and its instruction goes back to the pool (the parent carries into the next round), when
  equal      the evolved instruction adds no information over its parent: an LLM equality check (switchable), and
             without any LLM the normalized texts being identical;
  sorry      the answer contains "sorry" and is short (under 80 words): the model could not answer;
  stopwords  the answer is only punctuation and stop words;
  copied     the evolved instruction copies words from the evolution prompt ("#Rewritten Prompt#", "given prompt");
  empty      the evolved instruction or the answer is empty;
  too_long   the evolved instruction or the answer is over the length limit, or the model stopped at max_tokens.

Each rule is a small pure function returning a reason string (or None); `check_instruction` and `check_answer` run
them in a fixed order so that a pair is charged to exactly one rule.
"""
from __future__ import annotations

import dataclasses
import re

from ..errors import ConfigError
from .prompts import COPY_MARKERS

RULES = ("equal", "sorry", "stopwords", "copied", "empty", "too_long")

# NLTK's English stop-word list, lower case, without its contraction fragments (s t d ll m o re ve y ma): those are
# also regex and code tokens (`\\d+\\s*`), and an answer made of them is not "only stop words".
STOP_WORDS = frozenset("""
i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself yourselves he him his himself
she she's her hers herself it it's its itself they them their theirs themselves what which who whom this that
that'll these those am is are was were be been being have has had having do does did doing a an the and but if or
because as until while of at by for with about against between into through during before after above below to from
up down in out on off over under again further then once here there when where why how all any both each few more
most other some such no nor not only own same so than too very can will just don don't should should've now ain
aren aren't couldn couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't
mightn mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't won won't
wouldn wouldn't
""".split())

_WORD = re.compile(r"[A-Za-z0-9_']+")


@dataclasses.dataclass
class RuleConfig:
    """Limits for the rules. Lengths are in characters (tokenizer-free, so any model's output can be judged)."""

    max_instruction_chars: int = 4096  # an evolved instruction longer than this is eliminated (too_long)
    max_answer_chars: int = 16384  # an answer longer than this is eliminated (too_long)
    sorry_max_words: int = 80  # an answer with "sorry" in fewer words is eliminated (WizardLM: less than 80 words)
    disabled: tuple[str, ...] = dataclasses.field(default=(), metadata={"key": "disable_rule", "help": (
        "elimination rules to switch off: equal, sorry, stopwords, copied, empty, too_long")})
    # phrases of the evolution prompt that must not appear: the prompts' own (EvolConfig sets them from its prompts)
    copy_markers: tuple[str, ...] = dataclasses.field(default=COPY_MARKERS, init=False)

    def __post_init__(self):
        self.disabled = tuple(self.disabled)
        unknown = [r for r in self.disabled if r not in RULES]
        if unknown:
            raise ConfigError(f"--disable-rule {unknown[0]!r}: no such rule; choose from {', '.join(RULES)}.")
        for flag, value in (("--max-instruction-chars", self.max_instruction_chars),
                            ("--max-answer-chars", self.max_answer_chars), ("--sorry-max-words", self.sorry_max_words)):
            if value < 1:
                raise ConfigError(f"{flag} {value}: must be at least 1.")

    def on(self, rule: str) -> bool:
        return rule not in self.disabled


def normalize(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


def is_empty(text: str | None) -> bool:
    return text is None or not text.strip()


def copies_prompt(instruction: str, markers) -> str | None:
    """The first marker phrase found in the instruction. "given test case(s)" is ordinary task wording, not a copy of
    "#Given Test#", so a marker followed by "case" does not count."""
    low = instruction.lower()
    for m in markers:
        start = low.find(m)
        while start != -1:
            if not re.match(r"\s*cases?\b", low[start + len(m):]):
                return m
            start = low.find(m, start + 1)
    return None


def is_sorry(answer: str, max_words: int = 80) -> bool:
    return "sorry" in answer.lower() and len(answer.split()) < max_words


def only_stopwords(answer: str) -> bool:
    """True when every word is a stop word (punctuation is not a word, so punctuation-only answers count too)."""
    return all(w.strip("'") in STOP_WORDS or not w.strip("'") for w in _WORD.findall(answer.lower()))


def same_text(parent: str, evolved: str) -> bool:
    return normalize(parent) == normalize(evolved)


def is_equal_verdict(verdict: str) -> bool:
    """Read the model's answer to the equality prompt: "Equal" (or "they are equal") eliminates; "Not Equal", "not
    equal", "unequal" or anything without the word keeps the evolution."""
    words = normalize(verdict).split()
    if not words or "not" in words[:8] and "equal" in words[:8] or "unequal" in words:
        return False
    return "equal" in words[:8] or words[0] == "yes"


def check_instruction(evolved: str | None, parent: str | None, cfg: RuleConfig,
                      truncated: bool = False) -> tuple[str, str] | None:
    """Rules that need only the evolved instruction: (rule, detail) or None when it passes."""
    if cfg.on("empty") and is_empty(evolved):
        return "empty", "evolved instruction is empty"
    if cfg.on("too_long") and (truncated or len(evolved) > cfg.max_instruction_chars):
        return "too_long", ("evolution stopped at max_tokens" if truncated
                            else f"evolved instruction has {len(evolved)} > {cfg.max_instruction_chars} chars")
    if cfg.on("copied"):
        m = copies_prompt(evolved, cfg.copy_markers)
        if m:
            return "copied", f"evolved instruction contains {m!r} from the evolution prompt"
    if cfg.on("equal") and parent is not None and same_text(parent, evolved):
        return "equal", "evolved instruction is the parent, word for word"
    return None


def check_answer(answer: str | None, cfg: RuleConfig, truncated: bool = False) -> tuple[str, str] | None:
    """Rules on the answer to the evolved instruction: (rule, detail) or None when it passes."""
    if cfg.on("empty") and is_empty(answer):
        return "empty", "answer is empty"
    if cfg.on("too_long") and (truncated or len(answer) > cfg.max_answer_chars):
        return "too_long", ("answer stopped at max_tokens" if truncated
                            else f"answer has {len(answer)} > {cfg.max_answer_chars} chars")
    if cfg.on("sorry") and is_sorry(answer, cfg.sorry_max_words):
        return "sorry", f"answer says sorry in {len(answer.split())} < {cfg.sorry_max_words} words"
    if cfg.on("stopwords") and only_stopwords(answer):
        return "stopwords", "answer is only punctuation and stop words"
    return None


def check_pair(instruction: str, answer: str, cfg: RuleConfig, parent: str | None = None) -> tuple[str, str] | None:
    """All rules that need no LLM, on a finished pair (what `--filter-only` runs over existing data)."""
    return check_instruction(instruction, parent, cfg) or check_answer(answer, cfg)
