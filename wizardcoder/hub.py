"""Fetching checkpoints, tokenizers and datasets from the HF hub through huggingface_hub, which owns the cache,
`HF_HOME`/`HF_HUB_CACHE` and `HF_HUB_OFFLINE`. Offline with nothing cached is one clear error."""
from __future__ import annotations

import re

from .errors import CheckpointError


def download_files(repo_id: str, allow_patterns: list[str], what: str = "checkpoint", repo_type: str = "model",
                   revision: str | None = None, local_files_only: bool = False) -> str:
    """snapshot_download the matching files of `repo_id`; returns the local snapshot folder."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover
        raise CheckpointError(f"{repo_id}: not a local path, and huggingface_hub is not installed to fetch it.") from None
    try:
        return snapshot_download(repo_id, repo_type=repo_type, revision=revision, allow_patterns=allow_patterns,
                                 local_files_only=local_files_only)
    except Exception as e:
        raise _error(repo_id, e, what, repo_type) from None


def repo_listing(repo_id: str) -> tuple[str | None, list[str] | None] | None:
    """(commit, file names) of model repository `repo_id`'s default branch, from the hub (one request); (None, None)
    when the hub refuses (a missing, private or gated repository: snapshot_download then finds it in the cache or says
    which); None when the hub cannot be reached (HF_HUB_OFFLINE=1, no network, the hub down): the cache answers alone."""
    import httpx2
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    try:
        info = HfApi().model_info(repo_id)
    except (OfflineModeIsEnabled, httpx2.TransportError):
        return None
    except HfHubHTTPError as e:
        return None if e.response is not None and e.response.status_code >= 500 else (None, None)
    except Exception as e:
        raise _error(repo_id, e, "checkpoint", "model") from None
    return info.sha, [f.rfilename for f in info.siblings or []]


def _error(repo_id: str, e: Exception, what: str, repo_type: str) -> CheckpointError:
    """A huggingface_hub failure as one sentence."""
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(e, LocalEntryNotFoundError):
        return CheckpointError(
            f"{repo_id}: not a local path and not in the hub cache, and the hub cannot be reached (offline or "
            f"HF_HUB_OFFLINE=1); download the {what} once with network access or give a local folder.")
    if isinstance(e, RepositoryNotFoundError):
        return CheckpointError(f"{repo_id}: no such {repo_type} repository on the hub (or it is private: set HF_TOKEN).")
    # network errors, HTTP errors, bad ids
    return CheckpointError(f"{repo_id}: could not fetch the {what} from the hub ({type(e).__name__}: {str(e).splitlines()[0]}).")


def cached_files(repo_id: str, commit: str, repo_type: str = "model") -> list[str] | None:
    """The file names of `repo_id` at `commit` as huggingface_hub recorded them beside its cache when a download
    listed the repository (no request); None when it has no record (or is older than these records)."""
    try:
        from huggingface_hub import get_cached_repo_tree
        from huggingface_hub.errors import CachedRepoTreeNotFoundError
    except ImportError:  # pragma: no cover
        return None
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
