"""Ray job entry point for the DICOMweb loop: poll a PACS, file an AI draft SR into each new chest X-ray study.

Flags are those of `echo-ray pacs` (echo_ray/interop/cli.py). PACS credentials come from
`--auth-file` (a 0600 file on the node that runs the driver) or ECHO_PACS_AUTH in the node's own
environment (not through runtime_env, which Ray logs in clear text).

Usage:
    ray job submit --working-dir . -- python jobs/pacs.py --dicomweb http://pacs:8042/dicom-web \
        --service http://127.0.0.1:8000 --auth-file ~/.pacs_auth --poll-s 30
    python jobs/pacs.py --dicomweb http://127.0.0.1:8042/dicom-web --model runs/tiny --once
"""

import sys

from echo_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["pacs", *sys.argv[1:]]))
