"""Flags derived from dataclasses: types, defaults, bools, optionals, lists, Literal choices, help from comments."""
import argparse
import dataclasses
from typing import Literal

import pytest
import torch

from wizardcoder.cli_args import add_dataclass_arguments, dataclass_from_args
from wizardcoder.dtypes import resolve_dtype
from wizardcoder.errors import ConfigError


@dataclasses.dataclass
class Cfg:
    lr: float = 2e-5  # peak learning rate
    max_steps: int | None = None  # overrides epochs
    compile: bool = False
    optimizer: Literal["adamw", "adamw8bit"] = "adamw"
    stop: list[str] = dataclasses.field(default_factory=list)
    name: str = "x"


def _parser():
    p = argparse.ArgumentParser()
    add_dataclass_arguments(p, Cfg, exclude=("name",))
    return p


def test_given_flags_override_and_absent_ones_keep_the_base():
    p = _parser()
    cfg = dataclass_from_args(Cfg, p.parse_args(["--lr", "1e-3", "--compile", "--optimizer", "adamw8bit", "--stop", "a", "b"]))
    assert cfg == Cfg(lr=1e-3, compile=True, optimizer="adamw8bit", stop=["a", "b"])
    cfg = dataclass_from_args(Cfg, p.parse_args(["--max-steps", "5"]), base=Cfg(lr=9.0, compile=True))
    assert cfg == Cfg(lr=9.0, max_steps=5, compile=True)
    assert dataclass_from_args(Cfg, p.parse_args(["--no-compile", "--max-steps", "none"]), base=Cfg(compile=True, max_steps=3)) == Cfg()


def test_types_choices_and_help():
    p = _parser()
    with pytest.raises(SystemExit):
        p.parse_args(["--optimizer", "sgd"])
    with pytest.raises(SystemExit):
        p.parse_args(["--lr", "fast"])
    with pytest.raises(SystemExit):
        p.parse_args(["--name", "y"])  # excluded
    help_ = p.format_help()
    assert "peak learning rate" in help_ and "overrides epochs" in help_  # read from the field comments


def test_dtype_spellings():
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype(None, "cuda") is torch.bfloat16
    assert resolve_dtype("bf16") is torch.bfloat16 and resolve_dtype("float16") is torch.float16
    with pytest.raises(ConfigError, match="--dtype 'int8'"):
        resolve_dtype("int8")


def test_the_samples_flag_is_spelled_so_that_torchrun_accepts_it():
    """torchrun's own parser reads `--n` after the module name as an ambiguous abbreviation of its options and exits;
    `--num-samples` passes through to us, and our help shows it first (`--n` stays an alias)."""
    from torch.distributed.run import get_args_parser

    from wizardcoder.generate import add_arguments

    torchrun = get_args_parser()
    with pytest.raises(SystemExit):
        torchrun.parse_args(["--nproc_per_node", "2", "-m", "wizardcoder.generate", "--n", "200"])
    ns = torchrun.parse_args(["--nproc_per_node", "2", "-m", "wizardcoder.generate", "--num-samples", "200"])
    p = argparse.ArgumentParser()
    add_arguments(p)
    assert p.parse_args(ns.training_script_args).n == 200
    assert p.parse_args(["--n", "7"]).n == 7
    assert "--num-samples INT, --n INT" in p.format_help()
