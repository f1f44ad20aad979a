"""Ray job entry point for training stage 'cpt' (see echo_ray/train/launcher.py).

Usage:
    ray job submit --working-dir . -- python jobs/train_cpt.py --config configs/lingshu7b.yaml
    python jobs/train_cpt.py --config configs/tiny.yaml --set train.cpt.max_steps=5
Flags as `echo-ray train cpt`; exit 0 when the run finished, 2 on bad input.
"""

import sys

from echo_ray.train.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("cpt"))
