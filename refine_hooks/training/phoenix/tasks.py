"""SUM's task prompt (``shared/papers/sum.txt`` Sec. 3.2.4, Figure 2) for refiner training.

Datasets label different things: DIS5K / ThinObject-5K (and SUM's HQSeg-44K) outline salient objects,
COCO / LVIS (and EntitySeg) single entities, SAM's automatic masks entities and parts. Trained together,
the same input would have to give different masks. SUM tells the model which task a sample is: a task id
per dataset (0 unlabeled data / pseudo-labels, 1 salient object, 2 entity) looks up a learned embedding
that is added element-wise to the image embedding.

Here the embedding starts at zero (a fresh prompt changes nothing) and is added before every decoder
call of the trained model (all cascade steps); AMP's and SAM noise's frozen SAM never gets it. It is
switched on by default only when the sources span more than one task. The refiner checkpoint keeps it
(:func:`refine_hooks.sam.refiner_weights.save_refiner_checkpoint`), and the Phoenix refiner adds the row
of the task it is asked for after encoding (:class:`refine_hooks.refiners.Phoenix`, option ``task``).
"""

from __future__ import annotations

import collections
from typing import Optional, Sequence

import torch
from torch import nn

from ...sam.refiner_weights import TASKS

PSEUDO, SALIENT_OBJECT, ENTITY = 0, 1, 2


class TaskPrompt(nn.Module):
    """``nn.Embedding(num_tasks, C)``, zero-initialised (no random draw: the run's RNG streams are untouched).

    Args:
        channels: C, the image embedding's channels (SAM's prompt embedding dimension).
        num_tasks: rows (SUM's three tasks by default).
    """

    def __init__(self, channels: int, num_tasks: int = len(TASKS)):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(torch.zeros(num_tasks, channels), freeze=False)

    def forward(self, images: torch.Tensor, task_ids: Sequence[int]) -> torch.Tensor:
        """float ``B x C x h x w`` image embeddings plus the embedding of each one's task (``B`` ids)."""
        ids = torch.as_tensor(list(task_ids), dtype=torch.long, device=images.device)
        return images + self.embedding(ids)[:, :, None, None].to(images.dtype)


def task_prompt_enabled(asked: Optional[bool], sources) -> bool:
    """``asked`` when given; else on when the sources' tasks differ (SUM uses it to train tasks jointly)."""
    if asked is not None:
        return bool(asked)
    return len({source.task for source in sources}) > 1


def default_task(sources, refs) -> int:
    """The task inference uses unless told: the human-labelled task with the most training targets (entity
    on a tie), or ``pseudo`` when every source is unlabeled."""
    counts = collections.Counter(sources[ref.source].task for ref in refs if sources[ref.source].task != PSEUDO)
    if not counts:
        return PSEUDO
    return max(counts, key=lambda task: (counts[task], task))
