"""Process-wide torch settings of a run: cuDNN's autotuner only where every step has the same input sizes, and the
process's own settings back after the run."""

from __future__ import annotations

import pytest
import torch

import msresnet
from engine_fakes import base_config, install
from msresnet.engine.config import load_train_config
from msresnet.engine.settings import TorchSettings, set_cudnn_autotune, varies_input_size
from msresnet.engine.train import train


def _cfg(tmp_path, **over):
    return load_train_config(None, base_config(tmp_path / "r", **over))


@pytest.mark.parametrize(
    ("over", "model_kwargs", "varies"),
    [
        ({}, {}, False),
        ({"si_weight": 1.0}, {}, True),  # the resized view: a random size every step
        ({"si_feature_weight": 0.5}, {}, True),
        ({"si_weight": 1.0, "si_view": "degrade"}, {}, False),  # down-up degradation keeps the size
        ({}, {"pyramid_jitter": 0.5}, True),
        ({}, {"pyramid_jitter": 0.0}, False),
    ],
)
def test_varies_input_size(tmp_path, over, model_kwargs, varies):
    cfg = _cfg(tmp_path, **over)
    model = msresnet.create_model("msresnet8", num_classes=4, in_chans=1, **model_kwargs)
    assert varies_input_size(cfg, model) is varies


@pytest.mark.parametrize(("over", "on"), [({"deterministic": False}, True), ({"deterministic": True}, False),
                                          ({"deterministic": False, "si_weight": 1.0}, False)])  # fmt: skip
def test_set_cudnn_autotune(tmp_path, over, on):
    cfg = _cfg(tmp_path, **over)
    prev = torch.backends.cudnn.benchmark
    try:
        assert set_cudnn_autotune(cfg, msresnet.create_model("resnet8", num_classes=4, in_chans=1),
                                  torch.device("cpu")) is on  # fmt: skip
        assert torch.backends.cudnn.benchmark is on
    finally:
        torch.backends.cudnn.benchmark = prev


def test_torch_settings_restore_the_process_settings(tmp_path):
    cfg = _cfg(tmp_path, deterministic=True, threads=1)
    prev = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, torch.get_num_threads())
    torch.backends.cudnn.benchmark = True
    try:
        with TorchSettings(cfg):
            assert torch.are_deterministic_algorithms_enabled() and torch.get_num_threads() == 1
            assert torch.backends.cudnn.benchmark is False
        assert torch.backends.cudnn.benchmark is True
        assert torch.are_deterministic_algorithms_enabled() == prev[0] and torch.get_num_threads() == prev[2]
    finally:
        torch.backends.cudnn.benchmark = prev[1]


@pytest.mark.parametrize(("si_weight", "on"), [(0.0, True), (1.0, False)])
def test_training_steps_see_the_autotuner_setting(tmp_path, monkeypatch, si_weight, on):
    install(monkeypatch)
    seen: list[bool] = []
    cfg = _cfg(tmp_path, deterministic=False, si_weight=si_weight, epochs=1, protocol_params={"n_train": 96},
               batch_size=32)  # fmt: skip
    prev = torch.backends.cudnn.benchmark
    train(cfg, on_step=lambda step: seen.append(torch.backends.cudnn.benchmark))
    assert seen and set(seen) == {on}
    assert torch.backends.cudnn.benchmark is prev  # restored after the run
