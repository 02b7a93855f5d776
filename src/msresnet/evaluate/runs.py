"""What the evaluation side reads from a run directory besides its results: the size of the model it holds."""

from __future__ import annotations

from pathlib import Path

from msresnet.errors import UserError

__all__ = ["count_params"]


def count_params(run_dir: str | Path) -> int | None:
    """Number of parameters of the run's model, from the architecture its checkpoint names (built on the meta
    device, so no memory or time is spent on weights). None when the run has no readable checkpoint."""
    try:
        import torch

        import msresnet
        from msresnet.engine.checkpoint import read_checkpoint_info

        info = read_checkpoint_info(run_dir)
        with torch.device("meta"):
            model = msresnet.create_model(
                info.model,
                num_classes=info.num_classes,
                in_chans=info.in_chans,
                **dict(info.model_kwargs or {}),
            )
        return sum(p.numel() for p in model.parameters())
    except (UserError, OSError, ImportError, AttributeError, ValueError):
        return None
