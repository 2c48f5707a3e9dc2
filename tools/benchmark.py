"""Benchmarks: speed and memory of the refiner, the pseudo-label job and the evaluation.

    python tools/benchmark.py refiner --model-type vit_b --image-size 480x640 --masks 10 50
    python tools/benchmark.py job --help
    python tools/benchmark.py evaluation --help
    python tools/benchmark.py uncertainty --help
"""

import importlib
import sys

SUITES = {"refiner": "refine_hooks.benchmarks.refiner", "job": "refine_hooks.benchmarks.jobs", "evaluation": "refine_hooks.benchmarks.evaluation",
          "uncertainty": "refine_hooks.benchmarks.uncertainty"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUITES:
        print(__doc__)
        print(f"choose one of: {', '.join(SUITES)}")
        return 2
    return importlib.import_module(SUITES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
