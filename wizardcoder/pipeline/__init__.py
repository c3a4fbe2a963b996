"""The pipeline as one job: `wizardcoder run CONFIG` (run.py), the round-selection loop (rounds.py), the evolve
server a run starts (serving.py) and the evaluator check on canonical solutions (canonical.py)."""
from .run import STAGES, Run, RunOptions, run_pipeline

__all__ = ["STAGES", "Run", "RunOptions", "run_pipeline"]
