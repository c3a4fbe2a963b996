"""Model families: which class a checkpoint folder or a preset name is, so that callers never branch on a family.

    from wizardcoder import load_pretrained
    model = load_pretrained("WizardLMTeam/WizardCoder-Python-34B-V1.0", dtype=torch.bfloat16, device="cuda")

| config.json `model_type` / `architectures`        | class                       | presets                        |
|---------------------------------------------------|-----------------------------|--------------------------------|
| `gpt_bigcode` / `GPTBigCodeForCausalLM`           | `wizardcoder.StarCoder`     | `wizardcoder.starcoder_config.PRESETS`   |
| `llama` / `LlamaForCausalLM`                      | `wizardcoder.Llama`         | `llama_config.LLAMA_PRESETS`   |

Every class implements wizardcoder.protocol.CausalLM; this module imports none of them until one is asked for.
"""
from __future__ import annotations

import os

from .starcoder_config import PRESETS
from .errors import CheckpointError
from .llama_config import LLAMA_PRESETS

# model_type -> (module, class, the HF architecture name that also identifies it)
FAMILIES = {
    "gpt_bigcode": ("wizardcoder.model", "StarCoder", "GPTBigCodeForCausalLM"),
    "llama": ("wizardcoder.llama", "Llama", "LlamaForCausalLM"),
}
# preset name -> model_type
PRESET_FAMILIES = {**{name: "gpt_bigcode" for name in PRESETS}, **{name: "llama" for name in LLAMA_PRESETS}}


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


def class_for(model_type: str):
    """The model class of a family key (a config's `model_type`)."""
    import importlib

    module, cls, _ = FAMILIES[model_type]
    return getattr(importlib.import_module(module), cls)


def model_class(config: dict, source: str = "config.json"):
    """The model class for a config.json dict."""
    return class_for(family_of(config, source))


def _read_config(folder: str) -> tuple[dict, str]:
    from .io import read_json

    path = os.path.join(folder, "config.json")
    config = read_json(path, "config.json", CheckpointError, "a checkpoint folder needs a valid config.json")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object; fix the file.")
    return config, path


def resolve_model(name: str, **config_overrides):
    """`(model class, its config, checkpoint folder or None)` for a preset name (random init) or a checkpoint folder
    or hub id, without building the model."""
    from .checkpoint import resolve_folder

    if name in PRESET_FAMILIES:
        cls = class_for(PRESET_FAMILIES[name])
        return cls, cls.config_class.from_preset(name, **config_overrides), None
    folder = resolve_folder(name)
    config, path = _read_config(folder)
    cls = model_class(config, path)
    return cls, cls.config_class.from_hf_dict(config, source=path, **config_overrides), folder


def load_pretrained(path_or_hub_id: str, dtype=None, device=None, **config_overrides):
    """Load a checkpoint (local folder or hub id) as the model of the family its config.json names."""
    from .checkpoint import resolve_folder

    folder = resolve_folder(path_or_hub_id)
    config, path = _read_config(folder)
    return model_class(config, path).from_pretrained(folder, dtype=dtype, device=device, **config_overrides)
