"""`wizardcoder serve`: an OpenAI-compatible HTTP server over a checkpoint of either family (StarCoder, Llama), on the generation engine.

    wizardcoder serve --model runs/wc1b/final --port 8000 [--served-model-name wc1b] [--api-key-env MY_KEY]

`/v1/completions` and `/v1/chat/completions` (chat rendered with WizardCoder's Alpaca template), with `n`, `stop`,
`seed`, `top_p`, `top_k`, `stream: true` (server-sent events), real finish reasons and counted usage; `/v1/models`.
Layout: `config.py` the settings (`Config`), `protocol.py` the wire format and request checks, `worker.py` the engine's thread,
`app.py` the aiohttp routes. docs/serve.md describes the behaviour and the limits.
"""
from __future__ import annotations

import errno
import os
import socket

from ..errors import ConfigError, UserError
from .config import Config

__all__ = ["Config", "run", "load_model", "bind_socket", "resolve_device", "max_token_chars"]

def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, or one sentence saying why not (checked before the model loads)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise ConfigError(f"--host {host!r} cannot be resolved ({e.strerror}); give an IP address or a host "
                          "name.") from None
    family, _, _, _, addr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
        sock.listen(1024)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise UserError(f"--port {port} on {host} is already in use; stop the program listening there or pick "
                            "another --port.") from None
        if e.errno == errno.EACCES:
            raise UserError(f"--port {port} on {host} needs privileges; pick a port above 1023.") from None
        raise UserError(f"cannot listen on {host}:{port} ({e.strerror}); check --host and --port.") from None
    return sock


def resolve_device(name: str | None):
    """--device as a torch.device (None: cuda when available), or one sentence when it cannot be used here."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device {name!r} is not a device; use cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"--device {name}: there is no such CUDA device here ({torch.cuda.device_count()} "
                          "visible); use --device cpu or another index.")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device {name}: only cpu and cuda are supported.")
    return device


def load_model(cfg: Config):
    """(model, tokenizer, served name). A preset name gives random weights and the bundled tokenizer; anything else
    is a checkpoint whose tokenizer is stored beside it (or given by --tokenizer)."""
    from ..engine import load

    model, tok = load(cfg.model, tokenizer=cfg.tokenizer, dtype=cfg.dtype, device=resolve_device(cfg.device),
                      verb="serve")
    name = os.path.basename(os.path.normpath(cfg.model)) if os.path.exists(cfg.model) else cfg.model
    return model, tok, cfg.served_model_name or name


def max_token_chars(tok) -> int:
    """The most characters any one token of `tok` stands for: the UTF-8 length of its longest token (a character
    takes at least one byte, so no token covers more characters than its bytes). A prompt of more than max_len
    times this many characters cannot fit and is refused without tokenizing it."""
    return max(len(tok.decode([i]).encode("utf-8", "surrogatepass")) for i in range(tok.vocab_size))


def run(cfg: Config) -> int:
    sock = bind_socket(cfg.host, cfg.port)  # a taken port fails now, before torch is imported or the model loads
    try:
        from aiohttp import web

        from ..data.templates import get_template
        from ..engine import Engine, SamplingParams
        from ..engine.params import context_limit
        from ..profiling import Profile
        from .app import build_app
        from .protocol import Limits
        from .worker import EngineWorker

        template = get_template(cfg.template)
        api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and not api_key:
            raise UserError(f"--api-key-env {cfg.api_key_env}: that environment variable is not set.")
        model, tok, name = load_model(cfg)
        max_len = context_limit(model.config.n_positions, cfg.max_len)
        engine = Engine(model, tok, max_slots=cfg.max_slots, max_len=max_len, deterministic=cfg.deterministic)
        engine.step = Profile.from_config(cfg, "profile", 0, engine.device).around_steps(engine.step)  # --profile
        limits = Limits(model_name=name, vocab_size=tok.vocab_size, max_len=max_len, max_n=cfg.max_n,
                        max_new_tokens=cfg.max_new_tokens, template=template,
                        encode_batch=tok.encode_prompts, max_token_chars=max_token_chars(tok),
                        max_prompts=cfg.max_queued_samples)
        app = build_app(EngineWorker(engine, cfg.max_queued_samples), limits, SamplingParams, api_key=api_key,
                        request_timeout_s=cfg.request_timeout, max_body_bytes=int(cfg.max_body_mb * 2**20))
        print(f"serving {name} on http://{cfg.host}:{cfg.port}/v1 (max_len {max_len}, {cfg.max_slots} slots)",
              flush=True)
        # aiohttp closes a connection that has not sent a whole request's headers keepalive_timeout seconds after
        # it opened or after its last answer: that is the header timeout (a slow client cannot hold a socket).
        web.run_app(app, sock=sock, print=None, handler_cancellation=True, access_log=None,
                    keepalive_timeout=cfg.header_timeout)
    finally:
        sock.close()
    return 0
