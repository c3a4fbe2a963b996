"""`torchrun --nproc_per_node N -m wizardcoder.train ...`: the `wizardcoder train` verb, with the same flag and
`--config` handling."""
import sys

from ..cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
