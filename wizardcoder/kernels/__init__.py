"""Fused Triton kernels for StarCoder training. Their files live in the repository's top-level `kernels/` folder.

- `flash_attention`: FlashAttention-2 forward/backward, packed varlen (cu_seqlens), MQA/GQA, causal.
- `layernorm`: fused residual-add + LayerNorm forward/backward.
- `gelu`: fused bias + GELU (tanh or exact) forward/backward.
- `cross_entropy`: fused LM-head projection + cross-entropy that never holds the [tokens, vocab] logits.

Each file holds `@triton.jit` kernels, a launcher, a `torch.autograd.Function`, a public function and the one
plain-torch reference of that kernel (`<name>_reference`), which wizardcoder/ops.py's torch backend, the tests and the
benches all use. The files import without Triton (`_triton.py` stands in), so the references work everywhere.

How `kernels/` becomes this package (docs/kernels.md, "Where the files live"): `kernels/` has no `__init__.py`, so on
its own it is at most a namespace portion, and any installed distribution with a regular top-level `kernels` package
(Hugging Face's, which transformers imports) wins over it, whatever the working directory. This file is the package;
in a source checkout (run in place or installed editable) its `__path__` also names the top-level folder, and an
installed wheel holds the same files here, copied by setup.py's build step. So there is one import identity,
`wizardcoder.kernels.<file>`, and each custom op is registered once. Submodules are imported on use, not here.
"""
import os

_SOURCE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "kernels")
if os.path.isfile(os.path.join(_SOURCE, "flash_attention.py")):
    __path__.append(_SOURCE)  # noqa: F821 (a package's __path__ is defined by the import system)
