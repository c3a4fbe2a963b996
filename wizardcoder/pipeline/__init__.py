"""The pipeline as one job: `wizardcoder run CONFIG` (run.py: its Config and the order of the stages), the stages and
the Run that executes them (stages.py), the round-selection loop (rounds.py), the evolve server a run starts
(serving.py) and the evaluator check on canonical solutions (canonical.py). Imports go one way:
run -> rounds, canonical, serving -> stages."""
