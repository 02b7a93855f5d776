"""Process-wide torch settings of a training run: determinism, intra-op threads and cuDNN's autotuner.

:class:`TorchSettings` applies them for the run and restores the process's previous ones after (a notebook that
trains twice, or a test suite, does not inherit one run's choices). :func:`set_cudnn_autotune` turns the autotuner
on once the model is known, and only where it pays.
"""

from __future__ import annotations

import os

import torch
from torch import nn

from msresnet.engine.config import TrainConfig
from msresnet.engine.progress import log

__all__ = ["TorchSettings", "set_cudnn_autotune", "varies_input_size"]


class TorchSettings:
    """Apply ``deterministic`` / thread settings for the run and restore the process's previous ones after.

    The cuDNN autotuner starts off; :func:`set_cudnn_autotune` decides once the model exists.
    """

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg

    def __enter__(self) -> TorchSettings:
        self.prev = (
            torch.are_deterministic_algorithms_enabled(),
            torch.backends.cudnn.benchmark,
            torch.get_num_threads(),
        )
        if self.cfg.deterministic:
            # cuBLAS needs this before its first use to be deterministic; harmless on CPU.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        if self.cfg.threads > 0:
            torch.set_num_threads(self.cfg.threads)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.use_deterministic_algorithms(self.prev[0])
        torch.backends.cudnn.benchmark = self.prev[1]
        torch.set_num_threads(self.prev[2])


def varies_input_size(cfg: TrainConfig, model: nn.Module) -> bool:
    """Whether the training steps feed the model a new input size most of the time.

    Two things do: the scale-invariance loss's resized view (one random factor per step, so on 64-px images about a
    hundred distinct sizes, each multiplied by the levels of an image pyramid), and an image pyramid's
    training jitter. cuDNN's autotuner (``torch.backends.cudnn.benchmark``) times every convolution algorithm for
    each new shape it meets, so under such steps it keeps re-tuning instead of training.
    """
    from msresnet.layers.pyramid import ImagePyramid

    resized_view = (cfg.si_weight > 0 or cfg.si_feature_weight > 0) and cfg.si_view == "resize"
    jitter = any(isinstance(m, ImagePyramid) and m.jitter > 0 for m in model.modules())
    return resized_view or jitter


def set_cudnn_autotune(cfg: TrainConfig, model: nn.Module, device: torch.device, main: bool = True) -> bool:
    """Turn cuDNN's autotuner on where it pays: not under ``deterministic`` (it picks algorithms by timing), and only
    when every step has the same input sizes (:func:`varies_input_size`). Returns the setting."""
    varies = varies_input_size(cfg, model)
    torch.backends.cudnn.benchmark = on = not cfg.deterministic and not varies
    if varies and main and device.type == "cuda" and not cfg.deterministic:
        log("cuDNN autotuning off: the input size changes from step to step (scale-invariance view or pyramid jitter)")
    return on
