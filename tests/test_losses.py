"""ScaleInvarianceLoss: zero for an exactly scale-invariant model, positive otherwise, one pass when disabled."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import msresnet
from msresnet.errors import UserError
from msresnet.losses import ScaleInvarianceLoss, js_divergence


class GlobalMeanModel(nn.Module):
    """Logits from the global mean of each channel: exactly invariant to resizing a constant image."""

    min_input_size = 4

    def __init__(self, in_chans: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.fc = nn.Linear(in_chans, num_classes)
        self.calls = 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((-2, -1))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def test_zero_for_scale_invariant_model() -> None:
    torch.manual_seed(0)
    model = GlobalMeanModel()
    images = torch.rand(6, 1, 1, 1).expand(6, 1, 24, 24).contiguous()  # constant images
    targets = torch.randint(0, 3, (6,))
    crit = ScaleInvarianceLoss(weight=1.0, scale_range=(0.5, 2.0), feature_weight=1.0)
    loss, parts = crit(model, images, targets)
    assert parts["js"] == pytest.approx(0.0, abs=1e-7)
    assert parts["feat"] == pytest.approx(0.0, abs=1e-6)
    assert parts["loss"] == pytest.approx(parts["ce"], abs=1e-6)
    assert parts["view_scale"] != 1.0


def test_positive_for_a_real_model_and_gradients_flow() -> None:
    torch.manual_seed(0)
    model = msresnet.create_model("resnet8", num_classes=4, in_chans=1, width=0.25)
    images, targets = torch.rand(4, 1, 28, 28), torch.randint(0, 4, (4,))
    crit = ScaleInvarianceLoss(weight=2.0, scale_range=(0.5, 0.5), feature_weight=0.5)
    loss, parts = crit(model, images, targets)
    assert parts["js"] > 0 and parts["feat"] > 0
    assert parts["loss"] == pytest.approx(parts["ce"] + 2.0 * parts["js"] + 0.5 * parts["feat"], rel=1e-5)
    assert parts["logits"].shape == (4, 4) and not parts["logits"].requires_grad
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_plain_ce_makes_one_pass() -> None:
    model = GlobalMeanModel()
    images, targets = torch.rand(5, 1, 16, 16), torch.randint(0, 3, (5,))
    loss, parts = ScaleInvarianceLoss(weight=0.0)(model, images, targets)
    assert model.calls == 1  # a single forward pass
    assert parts["js"] == 0.0 and parts["view_scale"] == 1.0
    torch.testing.assert_close(loss, nn.functional.cross_entropy(model(images), targets))


def test_view_fn_and_min_size() -> None:
    model = GlobalMeanModel()
    seen = []

    def view(x: torch.Tensor) -> torch.Tensor:
        seen.append(x.shape)
        return x.flip(-1)

    ScaleInvarianceLoss(weight=1.0, view_fn=view)(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
    assert seen == [torch.Size([2, 1, 8, 8])]
    view_img, factor = ScaleInvarianceLoss(scale_range=(0.1, 0.1)).make_view(model, torch.rand(1, 1, 20, 20))
    assert min(view_img.shape[-2:]) >= model.min_input_size and factor >= 0.2


def test_js_divergence_bounds() -> None:
    a = torch.tensor([[10.0, -10.0]])
    assert js_divergence(a, a).item() == pytest.approx(0.0, abs=1e-7)
    assert js_divergence(a, -a).item() == pytest.approx(torch.log(torch.tensor(2.0)).item(), rel=1e-3)


def test_bad_arguments_are_user_errors() -> None:
    with pytest.raises(UserError):
        ScaleInvarianceLoss(weight=-1)
    with pytest.raises(UserError):
        ScaleInvarianceLoss(scale_range=(2.0, 1.0))
