"""Random init: the paper's untrained baseline, an encoder saved as initialised (seeded)."""

from __future__ import annotations

from torch import Tensor, nn

from etp.objectives import register
from etp.objectives.base import Objective


@register
class RandomInit(Objective):
    """No training: the run saves the seeded initialisation. It keeps a text head (random too)
    so that zero-shot and retrieval run on it like on any model."""

    name = "random"
    text_head = True
    trains = False

    @classmethod
    def check_batch_size(cls, batch_size: int) -> None:
        """Nothing is trained, so any batch size will do."""

    def forward(self, inputs: object, model: nn.Module | None = None) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError("random init is never trained")
