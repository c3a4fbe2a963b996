"""`load()`: the one way `generate` and `serve` turn --model into (model, tokenizer) ready for the engine, with the
checks both need before any sample is drawn (a tokenizer that fits the embeddings, weights that are numbers)."""
from __future__ import annotations

import os

import torch

from ..errors import UserError


def load(model: str, *, tokenizer: str | None = None, dtype: str = "auto", device=None, verb: str = "use"):
    """(model in eval mode, tokenizer) for `model`: a checkpoint folder or hub id of either family (its tokenizer
    stored beside it, or `tokenizer`), or a preset name (random weights, the bundled tokenizer). `verb` names what the caller does
    with it, for the one-sentence errors ("serve", "sample from")."""
    from ..dtypes import resolve_dtype
    from ..families import PRESET_FAMILIES, class_for, load_pretrained
    from ..tokenizer import Tokenizer

    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = resolve_dtype(dtype, device)
    if model in PRESET_FAMILIES and not os.path.exists(model):  # either family's preset: random weights
        tok = Tokenizer.from_pretrained(tokenizer) if tokenizer else Tokenizer.bundled()
        net = class_for(PRESET_FAMILIES[model]).from_preset(model, seed=0, vocab_size=tok.vocab_size, device=device,
                                                             dtype=dtype)
    else:
        tok = None
        if tokenizer is None and os.path.isdir(model):  # a folder without one fails before the weights load
            try:
                tok = Tokenizer.from_pretrained(model)
            except UserError:
                raise UserError(f"{model}: no tokenizer is stored with this checkpoint; save its tokenizer beside "
                                "it (serve also takes --tokenizer).") from None
        net = load_pretrained(model, dtype=dtype, device=device)  # the family its config.json names
        tok = tok or Tokenizer.from_pretrained(tokenizer or model)
        check_weights(net, model)
    if tok.vocab_size != net.config.vocab_size:
        raise UserError(f"the tokenizer ({tok.name}) has {tok.vocab_size} tokens but the model's vocabulary has "
                        f"{net.config.vocab_size}; {verb} the checkpoint with the tokenizer it was trained with.")
    return net.eval(), tok


@torch.no_grad()
def check_weights(model, where: str) -> None:
    """Refuse weights holding NaN or infinity (a diverged or corrupted checkpoint): every logit would be NaN, and
    sampling would quietly answer with token 0 for every step."""
    for name, p in model.named_parameters():
        if not bool(torch.isfinite(p).all()):
            raise UserError(f"{where}: the weight {name} holds NaN or infinite values; the checkpoint is broken "
                            "(take an earlier one, or retrain).")
