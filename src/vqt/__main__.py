"""`python -m vqt ...`: the same CLI as the `vqt` command (e.g. under `torchrun -m vqt` or without the script)."""

import sys

from vqt.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
