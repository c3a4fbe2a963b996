"""The generation engine (see core.py): shared prompt prefill, shared-prefix decode attention, continuous batching,
per-row sampling settings and seeds, stop strings, CUDA graphs on GPU."""
from .core import Completion, Engine, EngineStats, RequestOutput
from .load import load
from .params import SamplingParams

__all__ = ["SamplingParams", "Engine", "RequestOutput", "Completion", "EngineStats", "load"]
