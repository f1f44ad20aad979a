"""Ray job entry point for corpus normalization (issue 4): sources -> Parquet splits + manifest.

Reads `normalize` (sources, output, engine, dedup, splits, ...) from the config; flags are those of
`echo-ray normalize` (echo_ray/data/pipeline/cli.py). A rerun over the same output resumes.
Exit 0 when the run finished (quarantined records are reported in the summary), 2 on bad input.

Usage:
    ray job submit --working-dir . -- python jobs/normalize.py --config configs/<preset>.yaml
    python jobs/normalize.py --source iu_xray=/data/iu_xray_kaggle --output out/ --no-image-check
"""

import sys

from echo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["normalize", *sys.argv[1:]]))
