"""Model families by checkpoint: `load_pretrained` reads a folder's config.json and builds the family it names.

    from wizardcoder import load_pretrained
    model = load_pretrained("WizardLMTeam/WizardCoder-Python-34B-V1.0", dtype=torch.bfloat16, device="cuda")

| config.json `model_type` / `architectures`        | class                       |
|---------------------------------------------------|-----------------------------|
| `gpt_bigcode` / `GPTBigCodeForCausalLM`           | `wizardcoder.StarCoder`     |
| `llama` / `LlamaForCausalLM`                      | `wizardcoder.Llama`         |
"""
from __future__ import annotations

import os

from .errors import CheckpointError

# model_type -> (module, class, the HF architecture name that also identifies it)
FAMILIES = {
    "gpt_bigcode": ("wizardcoder.model", "StarCoder", "GPTBigCodeForCausalLM"),
    "llama": ("wizardcoder.llama", "Llama", "LlamaForCausalLM"),
}


def family_of(config: dict, source: str = "config.json") -> str:
    """The family key (`gpt_bigcode` | `llama`) a config.json dict names by model_type, else by architectures."""
    model_type, archs = config.get("model_type"), config.get("architectures") or []
    if model_type in FAMILIES:
        return model_type
    for key, (_, _, arch) in FAMILIES.items():
        if arch in archs:
            return key
    known = ", ".join(f"{k} ({a})" for k, (_, _, a) in FAMILIES.items())
    raise CheckpointError(f"{source}: model_type {model_type!r} (architectures {archs}) is not a family wizardcoder "
                          f"loads; supported: {known}.")


def model_class(config: dict, source: str = "config.json"):
    """The model class for a config.json dict."""
    import importlib

    module, cls, _ = FAMILIES[family_of(config, source)]
    return getattr(importlib.import_module(module), cls)


def load_pretrained(path_or_hub_id: str, dtype=None, device=None, **config_overrides):
    """Load a checkpoint (local folder or hub id) as the model of the family its config.json names."""
    from .checkpoint import resolve_folder
    from .io import read_json

    folder = resolve_folder(path_or_hub_id)
    path = os.path.join(folder, "config.json")
    config = read_json(path, "config.json", CheckpointError, "a checkpoint folder needs a valid config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object; fix the file.")
    return model_class(config, path).from_pretrained(folder, dtype=dtype, device=device, **config_overrides)
