"""`Config`: every setting of `wizardcoder serve` (one flag and one `[serve]` key per field, via wizardcoder.settings).

Importing it does not import torch, so a taken port is reported at once; --dtype is resolved (wizardcoder.dtypes) once,
when the model loads, and --max-len is checked against the model's positions by the engine it sizes."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import ConfigError
from ..profiling import ProfileConfig


@dataclass
class Config(ProfileConfig):  # --profile: a trace of engine steps wait+warmup+1 .. in --profile-dir
    model: str = ""  # checkpoint folder, hub id, or preset name (random weights, the bundled tokenizer)
    tokenizer: str | None = None  # tokenizer folder, file or hub id; none: the one stored with --model
    served_model_name: str | None = None  # the model id clients send; none: the checkpoint folder's name
    host: str = "127.0.0.1"  # address to listen on
    port: int = 8000  # TCP port to listen on
    dtype: str = "auto"  # auto | float32 | bfloat16 | float16 (auto: bf16 on CUDA, fp32 on CPU)
    device: str | None = None  # cuda, cuda:N or cpu; none: cuda when available
    max_slots: int = 32  # sequences the engine decodes together
    deterministic: bool = False  # batch-invariant engine: a seeded request's samples do not depend on other requests (slower)
    max_len: int | None = None  # tokens per sequence, prompt + completion; none: the model's positions
    max_n: int = 128  # largest `n` a request may ask for
    max_queued_samples: int = 1024  # samples (prompts x n) accepted and not yet answered; more is refused with 429
    max_new_tokens: int = 512  # completion length when a request gives no max_tokens (capped by max_len)
    request_timeout: float = 600.0  # seconds without a finished sample (streaming: a step) before a request gets 503
    max_body_mb: float = 8.0  # largest request body accepted, in MiB
    header_timeout: float = 10.0  # seconds a connection has to send a request's headers (also the idle keep-alive)
    api_key_env: str | None = None  # environment variable holding the key clients must send (Authorization: Bearer)
    template: str = "alpaca"  # prompt template for chat requests (a name in wizardcoder.data.templates or a JSON file)

    def __post_init__(self):
        self.check_profile()
        if not self.model:
            raise ConfigError("--model is required: give a checkpoint folder, a hub id or a preset name.")
        if not 0 < self.port < 65536:
            raise ConfigError(f"--port {self.port} is not a TCP port; use 1..65535.")
        for flag, value in (("--max-slots", self.max_slots), ("--max-n", self.max_n),
                            ("--max-queued-samples", self.max_queued_samples),
                            ("--max-new-tokens", self.max_new_tokens)):
            if value < 1:
                raise ConfigError(f"{flag} must be at least 1, got {value}.")
        if self.max_len is not None and self.max_len < 2:
            raise ConfigError(f"--max-len must be at least 2 (one prompt token and one new token), got {self.max_len}.")
        for flag, value in (("--request-timeout", self.request_timeout), ("--max-body-mb", self.max_body_mb),
                            ("--header-timeout", self.header_timeout)):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{flag} must be a positive number, got {value}.")
        if self.max_n > self.max_queued_samples:
            raise ConfigError(f"--max-n ({self.max_n}) is larger than --max-queued-samples "
                              f"({self.max_queued_samples}); such a request could never be queued, so lower --max-n "
                              "or raise the queue.")
