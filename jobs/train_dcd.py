"""Ray job entry point for Stage 3, DCD: teacher actor pool -> streamed trajectories -> one-step student.

Reads `train.dcd_teacher` (teacher, rounds, prompts_per_round, top_k, ...), `train.dcd` (the
student's DcdConfig: data, split, batch size, optimizer, loss weights, output_dir), `train.distributed`,
`model` and `prompt` from the config; flags are those of `echo-ray train dcd`
(echo_ray/train/dcd/cli.py). Exit 0 when the final model was written, 2 on bad input.

Usage:
    ray job submit --working-dir . -- python jobs/train_dcd.py --config configs/<preset>.yaml \
        --teacher s3://bucket/echo/runs/rad/final
    python jobs/train_dcd.py --teacher runs/rad/final --data data_out/normalized --output-dir runs/dcd
"""

import sys

from echo_ray.train.dcd.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
