"""Prompt templates: WizardCoder's Alpaca strings exactly, variant choice, user templates."""
import json

import pytest

from wizardcoder.data.templates import ALPACA, Template, get_template, register_template, TEMPLATES
from wizardcoder.errors import ConfigError

# Copied by hand from nlpxucan/WizardLM WizardCoder/src/train_wizardcoder.py, PROMPT_DICT.
REF_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)
REF_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. Write a "
    "response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n"
    "### Response:"
)


def test_alpaca_strings_are_wizardcoders():
    assert ALPACA.prompt_no_input == REF_NO_INPUT
    assert ALPACA.prompt_input == REF_INPUT
    assert get_template("alpaca") is ALPACA and get_template("wizardcoder") is ALPACA


def test_variant_choice_follows_train_tokenize_function():
    # no input, or input == "": the no-input variant; otherwise the with-input one. Nothing after "### Response:".
    assert ALPACA.prompt("Add {x}.") == REF_NO_INPUT.replace("{instruction}", "Add {x}.")
    assert ALPACA.prompt("Add.", "") == REF_NO_INPUT.replace("{instruction}", "Add.")
    p = ALPACA.prompt("Sum the list.", "[1, 2]")
    assert p == REF_INPUT.replace("{instruction}", "Sum the list.").replace("{input}", "[1, 2]")
    assert p.endswith("### Response:")


def test_template_without_input_variant_appends_input():
    t = Template("plain", "Q: {instruction}\nA:")
    assert t.prompt("hi", "there") == "Q: hi\n\nthere\nA:"


def test_bad_templates_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="exactly the fields"):
        Template("x", "no placeholder")
    with pytest.raises(ConfigError, match="exactly the fields"):
        Template("x", "{instruction}", prompt_input="{instruction} only")
    with pytest.raises(ConfigError, match="not a valid format string"):
        Template("x", "{instruction")
    with pytest.raises(ConfigError, match="unknown template"):
        get_template("nope")
    bad = tmp_path / "t.json"
    bad.write_text("[1]")
    with pytest.raises(ConfigError, match="prompt_no_input"):
        get_template(str(bad))


def test_template_from_file_and_registry(tmp_path):
    f = tmp_path / "mine.json"
    f.write_text(json.dumps({"prompt_no_input": "<s>{instruction}</s>", "prompt_input": "<s>{instruction}|{input}</s>"}))
    t = get_template(str(f))
    assert t.name == "mine" and t.prompt("a", "b") == "<s>a|b</s>"
    register_template(t)
    try:
        assert get_template("mine") is t
        with pytest.raises(ConfigError, match="already exists"):
            register_template(Template("mine", "{instruction}!"))
    finally:
        TEMPLATES.pop("mine")
    assert len(t.to_dict()["sha256"]) == 64
