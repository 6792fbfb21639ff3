"""Every method's training cost on one backbone/batch/input size: the table behind the accuracy-vs-memory claim.

Same options as `vqt bench memory`; this script only records its own command line in the output file.

    python benchmarks/methods_memory.py --steps 1 --out benchmarks/results/methods_memory_cpu.md
    python benchmarks/methods_memory.py --accuracies sweep.json --plot acc_vs_mem.png
"""

from __future__ import annotations

import argparse
import shlex
import sys

from vqt.cli.bench import add_memory_arguments, run_memory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_memory_arguments(parser)
    args = parser.parse_args()
    command = "python benchmarks/methods_memory.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    return run_memory(args, command=command)


if __name__ == "__main__":
    sys.exit(main())
