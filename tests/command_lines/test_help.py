"""What the tools' --help says: it exits 0 at every level, its examples print as they are written, and
it says what the code does (0-based shards, what happens to OUT.work/, where each default comes from)."""

from __future__ import annotations

import importlib.util
import os
import re
import runpy
import sys

import pytest

from refine_hooks.refiners import SAMRefiner

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = ["refine_pseudo_labels.py", "evaluate.py", "prepare_cocofied_lvis.py", "train_iou_adaption.py",
         "visualize_refinement.py", "benchmark.py", "mmdet_test.py"]
HAS_MMDET = importlib.util.find_spec("mmdet") is not None and importlib.util.find_spec("mmengine") is not None


def help_text(monkeypatch, capsys, tool, *args) -> str:
    monkeypatch.setattr(sys, "argv", [tool, *args, "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(os.path.join(REPO, "tools", tool), run_name="__main__")
    assert exit_info.value.code in (0, None), f"{tool} {' '.join(args)} --help exited {exit_info.value.code}"
    return capsys.readouterr().out


@pytest.mark.parametrize("suite", [None, "refiner", "job", "evaluation"])
def test_benchmark_help_exits_0_at_every_level(suite, monkeypatch, capsys):
    text = help_text(monkeypatch, capsys, "benchmark.py", *([suite] if suite else []))
    if suite is None:
        assert all(name in text for name in ("refiner", "job", "evaluation"))
    else:
        assert "--json" in text or "--out" in text  # the suite's own options


@pytest.mark.parametrize("tool", TOOLS)
def test_help_examples_print_as_written(tool, monkeypatch, capsys):
    """A backslash-continued example in a docstring must keep its backslash and line break (a plain
    docstring would join the lines, leaving a run of spaces inside the command)."""
    if tool == "mmdet_test.py" and not HAS_MMDET:
        pytest.skip("mmdet / mmengine not installed")
    text = help_text(monkeypatch, capsys, tool)
    commands, continued_line = [], False
    for line in text.splitlines():
        if re.match(r"\s*(python|torchrun) ", line) or continued_line:
            commands.append(line.split(" #")[0].strip().rstrip("\\").strip())
        continued_line = line.endswith("\\")
    assert commands, f"{tool} --help shows no example"
    for command in commands:
        assert not re.search(r"\S {3,}\S", command), f"{tool} --help prints a stray run of spaces: {command!r}"
    with open(os.path.join(REPO, "tools", tool)) as handle:
        source = handle.read()
    docstring = source[source.index('"""'):source.index('"""', source.index('"""') + 3)]
    continued = docstring.count(" \\\n")
    assert text.count(" \\\n") >= continued, f"{tool} --help lost the line continuations of its examples"


def option_help(text: str, flag: str) -> str:
    """The help of one option (after the usage lines, up to the next option)."""
    return text.rsplit(flag, 1)[1].split(" --")[0]


def test_job_help_says_what_the_job_does(monkeypatch, capsys):
    text = " ".join(help_text(monkeypatch, capsys, "refine_pseudo_labels.py").split())
    shard = option_help(text, "--shard i/n")
    assert "numbered from 0 (0/4 .. 3/4" in shard and "OUT.work/ is kept" in shard
    assert "always kept with" in option_help(text, "--keep-work-dir")
    score = option_help(text, "--score-thr SCORE_THR")
    assert "passed through (mask kept, reason below_score_thr)" in score and "no_score" in score
    assert "copied" not in score
    assert "On CPU each prompt set is decoded alone" in option_help(text, "--decoder-chunk-size DECODER_CHUNK_SIZE")
    # every hyper-parameter says where its default comes from; the margin is the paper's, not the code's
    for name in SAMRefiner.hyper_parameters():
        assert name in SAMRefiner.DEFAULT_SOURCES, f"no source for the default of {name}"
    margin = option_help(text, "--margin MARGIN")
    assert "default 0.1" in margin and "paper" in margin and "code uses 0" in margin
    assert "(default 30.0: the authors' code; the paper says 15)" in option_help(text, "--strength STRENGTH")
    assert "default: the authors'" not in text
    assert "tiny" in option_help(text, "--model-type MODEL_TYPE")


@pytest.mark.skipif(not HAS_MMDET, reason="mmdet / mmengine not installed")
def test_mmdet_test_help_lists_every_model_and_says_out_holds_predictions(monkeypatch, capsys):
    from refine_hooks.sam import MODEL_SPECS

    text = " ".join(help_text(monkeypatch, capsys, "mmdet_test.py").split())
    refiner_model = option_help(text, "--refiner-model REFINER_MODEL")
    assert all(name in refiner_model for name in MODEL_SPECS)
    out = text.rsplit("--out OUT", 1)[1].split("--metrics-out")[0]  # its help names --no-refine
    assert "predictions" in out and ".pkl" in out and "tools/test.py --out" in out
