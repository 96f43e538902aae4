"""Training-only heads on the image features the VLM reads (``scene_probe``, ``name_probe``).

Each is a small module with its own AdamW that follows the run's learning-rate schedule, fed by a
forward hook on the VLM's projector (``multi_modal_projector``), so the model runs once per batch.
Its loss is added to the model's; the gradient reaches the vision tower through the captured
features. The checkpoints the ``vla`` backend loads are unchanged; a head's state is kept beside
them for resuming, in a file of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from gf_policy.vla import PI0StyleVLA


class ImageFeatureHead:
    """A head, its hook on the projector and its optimiser. Subclasses say what it predicts."""

    state_file = "head.pt"  # the file beside a checkpoint that holds its state

    def __init__(self, model: PI0StyleVLA, head: nn.Module, lr: float, lr_factor: Callable[[int], float],
                 device: torch.device):
        self.head = head.to(device)
        self.optimizer = torch.optim.AdamW(self.head.parameters(), lr=lr)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor)
        self._features: list[torch.Tensor] = []
        projector = model.vlm.model.multi_modal_projector
        self._hook = projector.register_forward_hook(lambda _module, _inputs, output: self._features.append(output))

    @staticmethod
    def feature_width(model: PI0StyleVLA) -> int:
        return model.vlm.model.multi_modal_projector.linear.out_features

    def clear(self) -> None:
        self._features.clear()

    def features(self, index: int) -> torch.Tensor:
        """The image features of the ``index``-th image batch the model embedded since ``clear``."""
        if not self._features:
            raise RuntimeError(f"{type(self).__name__} saw no image features: run the model's forward first")
        return self._features[index].float()

    def step(self) -> None:
        """An optimiser step of the head (its gradients averaged over ranks first)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            for p in self.head.parameters():
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= dist.get_world_size()
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any]:
        return {"head": self.head.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict()}

    def save(self, directory: Path) -> None:
        torch.save(self.state_dict(), Path(directory) / self.state_file)

    def load(self, directory: Path) -> None:
        state = torch.load(Path(directory) / self.state_file, map_location="cpu", weights_only=False)
        self.head.load_state_dict(state["head"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    def close(self) -> None:
        self._hook.remove()
