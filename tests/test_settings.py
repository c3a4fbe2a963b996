"""The config spine (wizardcoder.settings): one dataclass gives a verb's flags, its config-file section and its
checks; types, defaults, bools, optionals, lists, Literal choices, groups, help from comments; resume markers."""
import argparse
import dataclasses
import json
from typing import Literal

import pytest
import torch

from wizardcoder import settings
from wizardcoder.dtypes import resolve_dtype
from wizardcoder.errors import ConfigError
from wizardcoder.resume import Marker, settings_hash


@dataclasses.dataclass
class Llm:
    base_url: str | None = dataclasses.field(default=None, metadata={"key": "llm_base_url"})  # endpoint
    retries: int = 3  # attempts per request


@dataclasses.dataclass
class Cfg:
    lr: float = 2e-5  # peak learning rate
    max_steps: int | None = None  # overrides epochs
    compile: bool = False
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    stop: list[str] = dataclasses.field(default_factory=list)
    n: int = dataclasses.field(default=1, metadata={"flags": ("--num-samples", "--n")})
    llm: Llm = dataclasses.field(default_factory=Llm, metadata={"title": "LLM endpoint"})

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"--lr must be positive, got {self.lr}.")


def test_flags_override_the_section_and_absent_ones_keep_it():
    cfg = settings.parse(Cfg, ["--lr", "1e-3", "--compile", "--optimizer", "adamw8bit", "--stop", "a", "b"])
    assert cfg == Cfg(lr=1e-3, compile=True, optimizer="adamw8bit", stop=["a", "b"])
    cfg = settings.parse(Cfg, ["--max-steps", "5"], section={"lr": 9, "compile": True})
    assert cfg == Cfg(lr=9.0, max_steps=5, compile=True) and isinstance(cfg.lr, float)
    cfg = settings.parse(Cfg, ["--no-compile", "--max-steps", "none"], section={"compile": True, "max_steps": 3})
    assert cfg == Cfg()


def test_groups_are_flat_flags_and_keys():
    cfg = settings.parse(Cfg, ["--llm-base-url", "http://x/v1"], section={"retries": 5})
    assert cfg.llm == Llm(base_url="http://x/v1", retries=5)
    assert settings.values_of(cfg)["llm_base_url"] == "http://x/v1"
    assert settings.build(Cfg, settings.values_of(cfg)) == cfg  # values_of inverts build
    assert settings.replace(cfg, retries=1).llm.retries == 1
    help_ = settings.parser_for(Cfg, "x").format_help()
    assert "LLM endpoint:" in help_ and "attempts per request" in help_


def test_config_values_are_checked_like_flags_in_one_sentence():
    with pytest.raises(ConfigError, match=r"run.toml \[x\] lr: must be a number \(it is the flag --lr\), got 'fast'"):
        settings.parse(Cfg, [], section={"lr": "fast"}, where="run.toml [x]")
    with pytest.raises(ConfigError, match="'sgd' is not one of 'adamw', 'adamw8bit'"):
        settings.build(Cfg, {"optimizer": "sgd"})
    with pytest.raises(ConfigError, match="must be an integer"):
        settings.build(Cfg, {"max_steps": 2.5})
    with pytest.raises(ConfigError, match="must be true or false"):
        settings.build(Cfg, {"compile": "yes"})
    with pytest.raises(ConfigError, match="unknown field 'learning_rate'; valid fields are compile, llm_base_url"):
        settings.build(Cfg, {"learning_rate": 1})
    with pytest.raises(ConfigError, match="--lr must be positive"):  # the dataclass's own check, once
        settings.build(Cfg, {"lr": -1})
    with pytest.raises(SystemExit):  # a bad flag on a command line: argparse's usage message
        settings.parse(Cfg, ["--optimizer", "sgd"])
    with pytest.raises(ConfigError, match="invalid float value"):  # inside a program: one sentence
        settings.parse(Cfg, ["--lr", "fast"], raising=True)


def test_types_choices_and_help():
    help_ = settings.parser_for(Cfg, "x").format_help()
    assert "peak learning rate" in help_ and "overrides epochs" in help_  # read from the field comments
    assert "--num-samples INT, --n INT" in help_
    assert settings.parse(Cfg, ["--n", "7"]).n == 7


def test_dtype_spellings():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, "cuda") is torch.bfloat16
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        resolve_dtype("int8")


def test_marker_records_settings_and_names_what_changed(tmp_path):
    m = Marker(str(tmp_path / "made.json"))
    assert m.read() is None and not m.matches({"a": 1})
    m.check({"a": 1}, "--out x", "choose another")  # no marker: nothing to refuse
    m.write({"a": 1, "b": [1, 2]}, state="running", stage="train")
    assert m.matches({"b": [1, 2], "a": 1}, state="running") and not m.matches({"a": 1, "b": [1, 2]})
    assert m.read()["stage"] == "train" and m.read()["hash"] == settings_hash({"b": [1, 2], "a": 1})
    with pytest.raises(ConfigError, match=r"--out x holds output made with other settings \(a: 1 -> 2\); choose"):
        m.check({"a": 2, "b": [1, 2]}, "--out x", "choose another")
    (tmp_path / "made.json").write_text("{torn")
    assert m.read() is None
    m.remove()
    m.remove()
    assert not (tmp_path / "made.json").exists()
    assert json.loads(json.dumps(settings_hash({"x": float("nan")})))  # any JSON-able value hashes


def test_lists_extend_and_repeated_lists_leave_positionals_alone():
    @dataclasses.dataclass
    class Run:
        config: str = dataclasses.field(default="", metadata={"positional": True})
        sets: list[str] = dataclasses.field(default_factory=list, metadata={"flags": ("--set",), "repeat": True})
        k: list[int] = dataclasses.field(default_factory=list)

    cfg = settings.parse(Run, ["--set", "a=1", "--set", "b=2", "run.toml", "--k", "1", "10", "--k", "100"])
    assert cfg == Run(config="run.toml", sets=["a=1", "b=2"], k=[1, 10, 100])
