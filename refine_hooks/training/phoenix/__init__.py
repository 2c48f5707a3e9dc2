"""Training of refiners that replace SAM's prompt encoder and mask decoder: Phoenix (adversarial mask
perturbation + contrastive mask refinement learning) and SUM's mask-refinement module (``noise="sam"``).

``shared/papers/phoenix.txt`` Sec. 3.3-3.4, Algorithms 1-2, appendix B; ``shared/papers/sum.txt`` Sec. 3.2.3,
appendix D. Modules: :mod:`.config` (settings), :mod:`.amp` (Algorithm 1), :mod:`.cmrl` (Algorithm 2),
:mod:`.noise` (morphological and SAM pseudo-label noise), :mod:`.decoder` (SAM's decoder with gradients),
:mod:`.step` (one step's loss), :mod:`.trainer` (the loop, checkpoints, hooks), :mod:`.data` (sources),
:mod:`.embeddings` (cache), :mod:`.run` (``train_refiner``), :mod:`.certainty` (SUM's uncertainty maps of
pseudo-targets, ``sum.txt`` Sec. 3.2.1-3.2.3), :mod:`.tasks` (SUM's task prompt, Sec. 3.2.4).
"""

from .config import AMPConfig, CMRLConfig, SamNoiseConfig, SelfSupervisedConfig, TrainingConfig
from .data import CocoSource, FolderPairSource, TrainingDataError, UnlabeledSource
from .run import TrainingData, train_refiner
from .trainer import RefinerTrainer, TrainingResumeError

__all__ = [
    "AMPConfig",
    "CMRLConfig",
    "CocoSource",
    "FolderPairSource",
    "RefinerTrainer",
    "SamNoiseConfig",
    "SelfSupervisedConfig",
    "TrainingConfig",
    "TrainingData",
    "TrainingDataError",
    "TrainingResumeError",
    "UnlabeledSource",
    "train_refiner",
]
