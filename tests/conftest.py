"""Shared test fixtures. Everything runs on CPU; Triton kernels run in the interpreter there."""
import gzip
import os
import shutil

import pytest

try:
    import torch

    HAS_CUDA = torch.cuda.is_available()
except ImportError:  # pragma: no cover
    HAS_CUDA = False

# Must be set before any @triton.jit function is defined (triton reads it at decoration time).
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    # The tests' tensors are tiny: on a 2-core machine running two pytest workers, a second intra-op thread per worker
    # only spins (measured: a small einsum 36 ms with two threads against 0.2 ms with one under load).
    torch.set_num_threads(int(os.environ.get("WIZARDCODER_TEST_THREADS", "1")))

from _util import REPO, SHARED_DATA  # noqa: E402,F401  (one definition, shared by every test file)

# Under CI the shared data must be there: a missing folder would otherwise turn ~50 tests into silent skips.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data():
    """../shared/data (public benchmark data, seed data and tokenizers); tests that need it skip without it."""
    if not os.path.isdir(SHARED_DATA):
        if IN_CI:
            pytest.fail(f"shared data folder {SHARED_DATA} is missing under CI=true; set WIZARDCODER_SHARED_DATA.")
        pytest.skip(f"shared data folder {SHARED_DATA} not present")
    return SHARED_DATA


def _unpacked_tokenizer(shared, name, tmp_path_factory):
    src = os.path.join(shared, "tokenizers", name)
    dst = tmp_path_factory.mktemp(f"tok-{name}")
    for f in os.listdir(src):
        if f.endswith(".gz"):
            with gzip.open(os.path.join(src, f), "rb") as fi, open(os.path.join(dst, f[:-3]), "wb") as fo:
                shutil.copyfileobj(fi, fo)
        else:
            shutil.copy(os.path.join(src, f), os.path.join(dst, f))
    return str(dst)


@pytest.fixture(scope="session")
def starcoder_tokenizer_dir(shared_data, tmp_path_factory):
    """A folder with StarCoder's tokenizer.json (49152 tokens), unpacked from ../shared/data."""
    return _unpacked_tokenizer(shared_data, "starcoder", tmp_path_factory)


@pytest.fixture(scope="session")
def wizardcoder_tokenizer_dir(shared_data, tmp_path_factory):
    """WizardCoder-15B's tokenizer folder: StarCoder's BPE plus [PAD] = 49152, and its config.json."""
    return _unpacked_tokenizer(shared_data, "wizardcoder-15b-v1.0", tmp_path_factory)


@pytest.fixture(scope="session")
def llama2_tokenizer_model(shared_data):
    return os.path.join(shared_data, "tokenizers", "llama2", "tokenizer.model")
