"""What every command-line tool in ``tools/`` shares: checks of its command line before any work, and one
way of saying no.

A tool is a thin shell over a library function (see DESIGN.md). What the shell adds is safety for the
user's files and a readable refusal instead of a traceback:

- nothing is written over an input: :func:`refuse_overwriting_inputs` compares every output with every
  input after following links (symbolic and hard), before any work;
- an output's name says what it holds: :func:`check_output_path` refuses a suffix that does not match
  what the tool writes (a torch archive named ``.json``), a directory, or a place that cannot be written;
- inputs exist and are files (:func:`require_files`), devices exist (:func:`checked_device`), numbers
  are in range (the ``argparse`` types :func:`positive_int`, :func:`positive_float`, ...);
- a refusal is one line on stderr, ``error: <what is wrong, naming the file or value>`` (details such as
  a list of bad records may follow on indented lines), and an exit status:

  ====  ==============================================================================================
  0     done
  2     the command line or an input is wrong (argparse's own errors exit 2 too); fix it and rerun
  3     the input is fine but the run cannot go on here: a half-done job with other options in
        ``OUT.work/``, a checkpoint that cannot be downloaded
  ====  ==============================================================================================

  Tracebacks are left for bugs.

How a tool uses it::

    import sys
    from refine_hooks import cli

    def main(argv=None) -> int:
        args = build_parser().parse_args(argv)
        cli.require_files({"--gt": args.gt, "--dt": args.dt})
        cli.check_output_path("--out", args.out, suffixes=(".json",), what="the summary")
        cli.refuse_overwriting_inputs({"--out": args.out}, {"--gt": args.gt, "--dt": args.dt})
        summary = library_function(args.gt, args.dt)   # raises ValueError naming the file on bad input
        ...
        return 0

    if __name__ == "__main__":
        sys.exit(cli.run(main, errors=(ValueError,)))

:func:`run` turns :class:`CliError` (raised by the checks here, or by the tool with :func:`fail`) and the
library exceptions the tool lists in ``errors`` (status 2) / ``environment_errors`` (status 3) into the
``error:`` line. List only exceptions whose messages name what is wrong; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Iterable, Mapping, NoReturn, Optional, Sequence, Tuple, Type, Union

PathLike = Union[str, "os.PathLike[str]"]

EXIT_BAD_INPUT = 2
EXIT_CANNOT_RUN = 3


class CliError(Exception):
    """A refusal: ``message`` is printed as ``error: <message>``, the tool exits with ``status``."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


def fail(message: str, status: int = EXIT_BAD_INPUT) -> NoReturn:
    """Stop the tool with ``error: <message>`` and exit status ``status``."""
    raise CliError(message, status)


def print_error(message: str) -> None:
    """``error: <first line>`` on stderr; further lines (details) follow as they are."""
    print(f"error: {str(message).strip()}", file=sys.stderr, flush=True)


def run(
    main: Callable[[Optional[Sequence[str]]], int],
    argv: Optional[Sequence[str]] = None,
    *,
    errors: Tuple[Type[BaseException], ...] = (),
    environment_errors: Tuple[Type[BaseException], ...] = (),
) -> int:
    """``main(argv)``'s exit status, with :class:`CliError`, ``errors`` (status 2) and
    ``environment_errors`` (status 3) printed as one ``error:`` line instead of a traceback.
    ``environment_errors`` are checked first, so they may be subclasses of an ``errors`` entry."""
    try:
        return main(argv)
    except CliError as error:
        print_error(str(error))
        return error.status
    except environment_errors as error:
        print_error(str(error))
        return EXIT_CANNOT_RUN
    except errors as error:
        print_error(str(error))
        return EXIT_BAD_INPUT


# ----------------------------------------------------------------------------------------- files
def _named_paths(named: Mapping[str, Union[None, PathLike, Iterable[PathLike]]]):
    """``(name, path)`` pairs of a ``{name: path | [paths] | None}`` mapping, Nones left out."""
    for name, value in named.items():
        if value is None:
            continue
        if isinstance(value, (str, os.PathLike)):
            yield name, os.fspath(value)
        else:
            for path in value:
                if path is not None:
                    yield name, os.fspath(path)


def require_files(named: Mapping[str, Optional[PathLike]]) -> None:
    """Each given path (``{"--gt": path}``; None: not given) exists and is a file (links followed)."""
    for name, path in _named_paths(named):
        if os.path.isdir(path):
            fail(f"{name} {path}: is a directory, not a file")
        if not os.path.exists(path):
            fail(f"{name} {path}: no such file")
        if not os.path.isfile(path):
            fail(f"{name} {path}: not a regular file")


def require_directory(name: str, path: PathLike) -> None:
    """``path`` exists and is a directory."""
    path = os.fspath(path)
    if not os.path.exists(path):
        fail(f"{name} {path}: no such directory")
    if not os.path.isdir(path):
        fail(f"{name} {path}: not a directory")


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name the same file: the same path after following every symbolic link, or
    (both existing) the same inode, which also catches hard links and bind mounts."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def refuse_overwriting_inputs(
    outputs: Mapping[str, Union[None, PathLike, Iterable[PathLike]]],
    inputs: Mapping[str, Union[None, PathLike, Iterable[PathLike]]],
) -> None:
    """Refuse (status 2) when any output names the same file as any input, links followed.

    Call it before any work. Both arguments map how the file is named on the command line (``"--out"``,
    ``"IN"``, ``"the summary of --out"``) to a path, a list of paths, or None (not given).
    """
    input_pairs = list(_named_paths(inputs))
    for out_name, out_path in _named_paths(outputs):
        for in_name, in_path in input_pairs:
            if same_file(out_path, in_path):
                how = "" if os.path.abspath(out_path) == os.path.abspath(in_path) else " (through a link)"
                fail(f"{out_name} {out_path} is the same file as {in_name} {in_path}{how}: "
                     "refusing to overwrite an input; choose another output name")
    outputs_seen = {}
    for out_name, out_path in _named_paths(outputs):
        for other_name, other_path in outputs_seen.items():
            if same_file(out_path, other_path):
                fail(f"{out_name} {out_path} and {other_name} {other_path} are the same file; choose other names")
        outputs_seen[out_name] = out_path


def check_output_path(
    name: str,
    path: PathLike,
    *,
    suffixes: Optional[Sequence[str]] = None,
    what: str = "the output",
) -> None:
    """Refuse an output path that cannot hold what the tool writes, before any work.

    Args:
        name: how the command line names it (``"--out"``).
        path: the output file.
        suffixes: accepted file name endings (case-insensitive), e.g. ``(".pth", ".pt")``; None: any.
        what: what is written there, for the message (``"a torch archive"``).
    """
    path = os.fspath(path)
    if suffixes is not None and not path.lower().endswith(tuple(s.lower() for s in suffixes)):
        fail(f"{name} {path}: {what} is written there, so its name must end in {' or '.join(suffixes)}")
    if os.path.isdir(path):
        fail(f"{name} {path}: is a directory; give a file name")
    parent = os.path.dirname(os.path.abspath(path))
    existing = parent
    while not os.path.exists(existing):  # the directories the tool would create
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        fail(f"{name} {path}: cannot be created: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        fail(f"{name} {path}: cannot be written: no write permission in {existing}")


# --------------------------------------------------------------------------------------- devices
def checked_device(device: Optional[str], name: str = "--device") -> str:
    """The device a tool runs on: ``device`` checked to exist here, or ``cuda`` when available else
    ``cpu`` when None. Refuses (status 2) a malformed name, ``cuda`` without a usable CUDA, and a
    CUDA index this machine does not have, before any model is built."""
    import torch

    if device is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        fail(f"{name} {device!r}: not a device name (cpu, cuda, cuda:N)")
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "no CUDA"
            fail(f"{name} {device}: CUDA is not available on this machine (torch {torch.__version__} built with "
                 f"{built}, no usable GPU or driver found); use {name} cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            fail(f"{name} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        fail(f"{name} {device}: MPS is not available on this machine; use {name} cpu")
    return device


# --------------------------------------------------------------------------------- argparse types
def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """``argparse`` type: an integer >= 0."""
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_float(text: str) -> float:
    """``argparse`` type: a finite number > 0."""
    value = _number(float, text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number greater than 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """``argparse`` type: a finite number >= 0."""
    value = _number(float, text)
    if not (value >= 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number of at least 0, got {text}")
    return value


def model_type(text: str) -> str:
    """``argparse`` type: a SAM variant of :data:`refine_hooks.sam.MODEL_SPECS`."""
    from .sam.registry import MODEL_SPECS

    if text not in MODEL_SPECS:
        raise argparse.ArgumentTypeError(f"unknown model type {text!r}; known: {', '.join(MODEL_SPECS)}")
    return text


def model_types_help() -> str:
    """The SAM variants a ``--model-type`` accepts, for help texts."""
    from .sam.registry import MODEL_SPECS

    return ", ".join(MODEL_SPECS)
