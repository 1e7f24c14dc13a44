"""clipdehaze: CLIP-guided image restoration experiments with Lightning + Hydra."""

import os

# libgomp's default spin-waiting collapses when the CPU is shared (another job, data workers): measured here, a
# DehazeFormer-T train step went from 1.9 s to 35-43 s with 2 threads beside one busy process. Threads that sleep
# when idle cost little on a dedicated machine. Read by libgomp when torch loads, so it is set before any torch
# import of ours; an explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
