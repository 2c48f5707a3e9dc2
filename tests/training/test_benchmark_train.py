"""tools/benchmark.py train: what it reports is what the run did (tiny random SAM, generated data)."""

from refine_hooks.benchmarks import training as benchmark
from refine_hooks.training.phoenix.config import AMPConfig


def test_train_benchmark_counts_every_amp_update_and_the_cache():
    # 2 images x 3 masks at batch 2: one epoch is 3 iterations, so 5 iterations leave 2 after it.
    result = benchmark.run("tiny", cache=True, height=96, width=128, images=2, iterations=5, batch_size=2,
                           device="cpu", precision="fp32", contrastive=False)
    # The benchmark's band [0, 0] is never reached: every mask takes all N - 1 updates of Algorithm 1.
    assert result["amp_updates_per_mask"] == AMPConfig().inner_steps - 1
    assert result["amp_ms_per_update"] > 0
    assert result["cache_hits"] > 0
    assert result["s_per_iteration_after_first_epoch"] is not None
    assert result["iterations"] == 5 and result["iterations_per_s"] > 0


def test_after_first_epoch_is_null_when_the_run_is_one_epoch_or_shorter():
    result = benchmark.run("tiny", cache=False, height=96, width=128, images=2, iterations=3, batch_size=2,
                           device="cpu", precision="fp32", contrastive=False)
    assert result["s_per_iteration_after_first_epoch"] is None
    assert result["cache_hits"] == 0
