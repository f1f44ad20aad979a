"""Ray job entry point for evaluation: decode a held-out split with each configured row, write the table.

Reads `eval` (data, split, language, rows, num_actors, ...), `decode`, `prompt` and `model` from the
config; flags are those of `echo-ray eval` (echo_ray/eval/cli.py). With `eval.num_actors > 0` the
decoding runs on a Ray Data actor pool of the job's cluster. Exit 0 when the table was written,
2 on bad input (one line on stderr).

Usage:
    ray job submit --working-dir . -- python jobs/evaluate.py --config configs/<preset>.yaml
    python jobs/evaluate.py --model runs/dcd/final --data data_out/normalized --out eval_out
"""

import sys

from echo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
