"""The command line as users run it: killed and resumed, under torchrun, and split with --shard."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from refine_hooks.jobs import work_dir_for

from pseudo_label_data import make_coco_dataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(REPO, "tools", "refine_pseudo_labels.py")
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _env():
    env = dict(os.environ)
    # CPU float results depend on the intra-op thread count; torchrun gives each rank one thread, so
    # every run here uses one (docs/pseudo_labels.md says the same to users).
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _args(dataset, checkpoint, out, *extra):
    return [
        dataset["ann"], "--images", dataset["images"], "--out", out, "--model-type", "tiny", "--checkpoint", checkpoint,
        "--device", "cpu", "--workers", "0", "--chunk-size", "1", "--no-progress", "--no-use-mask", *extra,
    ]


def _run(argv, launcher=(sys.executable,)):
    completed = subprocess.run([*launcher, TOOL, *argv], env=_env(), capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


def _bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


@pytest.fixture()
def dataset(tmp_path):
    make_coco_dataset(str(tmp_path), num_images=10, seed=3)
    return {"images": str(tmp_path / "images"), "ann": str(tmp_path / "pseudo.json")}


def kill_after_first_chunk(argv, out):
    """Run the tool with ``argv``, SIGKILL it as soon as its first chunk file exists; returns the chunk files."""
    work = work_dir_for(out)
    process = subprocess.Popen([sys.executable, TOOL, *argv], env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(work) and any(name.startswith("chunk-") and name.endswith(".json") for name in os.listdir(work)):
            break
        time.sleep(0.01)
    assert process.poll() is None, "the run ended before it could be killed: " + process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    return sorted(n for n in os.listdir(work) if n.startswith("chunk-") and n.endswith(".json"))


def test_killed_run_resumes_to_the_same_bytes(dataset, tiny_checkpoint, tmp_path):
    out = str(tmp_path / "killed.json")
    work = work_dir_for(out)
    chunks_done = kill_after_first_chunk(_args(dataset, tiny_checkpoint, out, "--iterations", "8"), out)
    assert not os.path.exists(out) and 1 <= len(chunks_done) < 9, chunks_done

    # a different result-deciding option is refused ...
    refused = subprocess.run([sys.executable, TOOL, *_args(dataset, tiny_checkpoint, out, "--iterations", "3")],
                             env=_env(), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 3 and "iterations" in refused.stderr
    # ... the same command finishes the job, and the file is the one an uninterrupted run writes
    _run(_args(dataset, tiny_checkpoint, out, "--iterations", "8"))
    uninterrupted = str(tmp_path / "uninterrupted.json")
    _run(_args(dataset, tiny_checkpoint, uninterrupted, "--iterations", "8"))
    assert _bytes(out) == _bytes(uninterrupted)
    assert not os.path.exists(work)


def test_torchrun_two_ranks_and_shards_give_the_single_process_file(dataset, tiny_checkpoint, tmp_path):
    single = str(tmp_path / "single.json")
    _run(_args(dataset, tiny_checkpoint, single))

    ranked = str(tmp_path / "ranked.json")
    _run(_args(dataset, tiny_checkpoint, ranked), launcher=(TORCHRUN, "--standalone", "--nproc_per_node=2"))
    assert _bytes(ranked) == _bytes(single)

    sharded = str(tmp_path / "sharded.json")
    first = _run(_args(dataset, tiny_checkpoint, sharded, "--shard", "0/3"))
    assert not os.path.exists(sharded) and "when all parts are done" in first.stdout
    _run(_args(dataset, tiny_checkpoint, sharded, "--shard", "2/3"))
    _run(_args(dataset, tiny_checkpoint, sharded, "--shard", "1/3"))  # the last part merges
    assert _bytes(sharded) == _bytes(single)
    # the parts share OUT.work/ (another may still be reading it): kept, as --help and the docs say
    assert os.path.isdir(work_dir_for(sharded)) and not os.path.exists(work_dir_for(single))
    _run(_args(dataset, tiny_checkpoint, sharded, "--shard", "0/3"))  # a retried part just merges again
    assert _bytes(sharded) == _bytes(single)
    with open(str(tmp_path / "single.summary.json")) as handle:
        assert json.load(handle)["complete"] is True
