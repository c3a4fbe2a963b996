"""The loader's packed batches against the model's packed form: the loss of a packed micro-batch equals the sum of
each document's loss computed alone, so no document sees or predicts another, and padding adds nothing."""
import json
import os

import pytest
import torch

from wizardcoder.data import PackedLoader, pack_dataset

ASSET = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "wizardcoder", "assets",
                     "demo_seed.jsonl")


def test_packed_loss_is_the_sum_of_document_losses(starcoder_tokenizer_dir, tmp_path):
    model_mod = pytest.importorskip("wizardcoder.model")
    out = str(tmp_path / "shards")
    pack_dataset(ASSET, starcoder_tokenizer_dir, 256, out, progress=False)
    loader = PackedLoader(out, micro_batch_size=2, seed=0)
    batch = next(iter(loader))
    cu = batch["cu_seqlens"]
    assert len(cu) > 4  # several documents (and maybe padding) in the stream
    model = model_mod.StarCoder.from_preset("tiny", seed=0, vocab_size=49152, n_positions=256,
                                            attn_backend="torch", kernel_backend="torch").eval()
    with torch.no_grad():
        packed = model(batch["input_ids"], position_ids=batch["position_ids"], cu_seqlens=cu,
                       max_seqlen=batch["max_seqlen"], labels=batch["labels"], reduction="sum")
        alone = torch.zeros((), dtype=packed.dtype)
        n_targets = 0
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            labels = batch["labels"][:, s:e]
            if (labels != -100).sum() == 0:
                continue  # padding (or a document without loss) adds nothing
            alone += model(batch["input_ids"][:, s:e], labels=labels, reduction="sum")
            n_targets += int((labels[:, 1:] != -100).sum())
    assert torch.allclose(packed, alone, rtol=1e-4), (packed, alone)
    # the shift loses one target per document only where the first token carried a label: never (prompts come first)
    assert n_targets == batch["num_loss_tokens"]
