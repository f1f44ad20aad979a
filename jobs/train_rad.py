"""Ray job entry point for training stage 'rad' (see echo_ray/train/launcher.py).

Usage:
    ray job submit --working-dir . -- python jobs/train_rad.py --config configs/lingshu7b.yaml
    python jobs/train_rad.py --config configs/tiny.yaml --set train.rad.max_steps=5
Flags as `echo-ray train rad`; exit 0 when the run finished, 2 on bad input.
"""

import sys

from echo_ray.train.cli import job_main

if __name__ == "__main__":
    sys.exit(job_main("rad"))
