"""Ray job entry point for the synthetic phantom corpus: the flags of `echo-ray phantom`.

Usage:
    jobs/submit.sh phantom --out data_out/phantom --n 16 --set storage.root=/mnt/shared/echo
"""

import sys

from echo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["phantom", *sys.argv[1:]]))
