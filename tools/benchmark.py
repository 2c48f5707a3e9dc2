"""Benchmarks: speed and memory of the refiner, the pseudo-label job and the evaluation.

    python tools/benchmark.py refiner --model-type vit_b --image-size 480x640 --masks 10 50 [--refiner phoenix]
    python tools/benchmark.py train --model-type tiny vit_b --cache off on
    python tools/benchmark.py job --help
    python tools/benchmark.py evaluation --help
    python tools/benchmark.py uncertainty --help
"""

import argparse
import importlib
import sys

SUITES = {
    "refiner": "refine_hooks.benchmarks.refiner",
    "job": "refine_hooks.benchmarks.jobs",
    "evaluation": "refine_hooks.benchmarks.evaluation",
    "train": "refine_hooks.benchmarks.training",
    "uncertainty": "refine_hooks.benchmarks.uncertainty",
}


def build_parser() -> argparse.ArgumentParser:
    """One argparse sub-command per suite, with the suite module's own options (``add_arguments``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    suites = parser.add_subparsers(dest="suite", metavar="SUITE", required=True,
                                   help=", ".join(SUITES) + " (each has its own --help)")
    for name, module_name in SUITES.items():
        module = importlib.import_module(module_name)
        summary = module.__doc__.strip().splitlines()[0]
        suite = suites.add_parser(name, help=summary, description=module.__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(suite)
        suite.set_defaults(run=module.run_from_args)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    from refine_hooks import cli

    sys.exit(cli.run(main))
