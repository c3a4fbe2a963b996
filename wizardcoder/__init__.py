"""wizardcoder: Evol-Instruct for code, fine-tuning of StarCoder and Llama-family code models, batched sampling and
sandboxed pass@k.

    from wizardcoder import StarCoder, Tokenizer, load_pretrained
    model = StarCoder.from_pretrained("bigcode/starcoderbase-1b", dtype=torch.bfloat16, device="cuda")
    model = load_pretrained("codellama/CodeLlama-7b-Python-hf", dtype=torch.bfloat16, device="cuda")  # by config.json
    tok = Tokenizer.from_pretrained("bigcode/starcoderbase-1b")

Names are imported lazily so that `wizardcoder evaluate` and friends start without importing torch.
"""
__version__ = "0.1.0"

_LAZY = {
    "StarCoder": "wizardcoder.model",
    "StarCoderConfig": "wizardcoder.starcoder_config",
    "Llama": "wizardcoder.llama",
    "LlamaConfig": "wizardcoder.llama_config",
    "load_pretrained": "wizardcoder.families",
    "PRESETS": "wizardcoder.starcoder_config",
    "Tokenizer": "wizardcoder.tokenizer",
    "UserError": "wizardcoder.errors",
}

__all__ = list(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'wizardcoder' has no attribute {name!r}")
