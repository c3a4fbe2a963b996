"""Fetching checkpoints, tokenizers and datasets from the HF hub through huggingface_hub, which owns the cache,
`HF_HOME`/`HF_HUB_CACHE` and `HF_HUB_OFFLINE`. Offline with nothing cached is one clear error."""
from __future__ import annotations

import re

from .errors import CheckpointError


def download_files(repo_id: str, allow_patterns: list[str], what: str = "checkpoint", repo_type: str = "model",
                   revision: str | None = None) -> str:
    """snapshot_download the matching files of `repo_id`; returns the local snapshot folder."""
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError:  # pragma: no cover
        raise CheckpointError(f"{repo_id}: not a local path, and huggingface_hub is not installed to fetch it.") from None
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns)
    except LocalEntryNotFoundError:
        raise CheckpointError(
            f"{repo_id}: not a local path and not in the hub cache, and the hub cannot be reached (offline or "
            f"HF_HUB_OFFLINE=1); download the {what} once with network access or give a local folder."
        ) from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"{repo_id}: no such {repo_type} repository on the hub (or it is private: set HF_TOKEN).") from None
    except Exception as e:  # network errors, HTTP errors, bad ids
        raise CheckpointError(f"{repo_id}: could not fetch the {what} from the hub ({type(e).__name__}: {str(e).splitlines()[0]}).") from None


def cached_files(repo_id: str, commit: str, repo_type: str = "model") -> list[str] | None:
    """The file names of `repo_id` at `commit` as the hub client recorded them beside its cache when it listed the
    repository (no request is made); None when it has no record (the hub was not reached)."""
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo_id, repo_type=repo_type, revision=commit)]
    except CachedRepoTreeNotFoundError:
        return None


def is_hub_id(s: str) -> bool:
    """True for `name` or `owner/name` that is not an existing local path and does not look like one."""
    if s.startswith((".", "/", "~")) or s.count("/") > 1:
        return False
    try:
        from huggingface_hub.utils import validate_repo_id

        validate_repo_id(s)
        return True
    except Exception:
        return False


_DATASET_SPEC = re.compile(r"^(?:hf://datasets/)?([^@:]+)(?:@([^:]+))?(?::(.+))?$")


def parse_dataset_spec(spec: str) -> tuple[str, str | None, str | None] | None:
    """`owner/name[@revision][:glob]` (also `hf://datasets/owner/name...`) -> (repo_id, revision, glob); None when
    `spec` is not written that way (the repo id part is checked by `is_hub_id`)."""
    m = _DATASET_SPEC.match(spec)
    if not m or "/" not in m.group(1) or not is_hub_id(m.group(1)):
        return None
    return m.group(1), m.group(2), m.group(3)
