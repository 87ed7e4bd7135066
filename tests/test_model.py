"""Model factory: local pretrained weights (state dict or safetensors), new heads, own nets."""

import pytest
import timm
import torch
from safetensors.torch import save_file

from dermlow.config import ModelConfig
from dermlow.errors import UserError
from dermlow.models.factory import create_model


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_weights_fill_the_backbone_and_leave_a_fresh_head(tmp_path, suffix):
    torch.manual_seed(0)
    source = timm.create_model("test_resnet", pretrained=False, num_classes=1000)
    path = tmp_path / f"weights{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    model = create_model(ModelConfig(name="test_resnet", weights=str(path)), num_classes=7)
    loaded = model.state_dict()
    head = model.pretrained_cfg["classifier"]
    assert loaded[f"{head}.weight"].shape == (7, state[f"{head}.weight"].shape[1])  # new 7-class head
    backbone = [k for k in state if not k.startswith(head)]
    assert backbone and all(torch.equal(loaded[k], state[k]) for k in backbone)


def test_missing_weights_file_and_unknown_model(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        create_model(ModelConfig(name="test_resnet", weights=str(tmp_path / "nope.pth")), num_classes=3)
    with pytest.raises(UserError, match="unknown model 'densenet9000'"):
        create_model(ModelConfig(name="densenet9000", pretrained=False), num_classes=3)


def test_weights_of_another_architecture_are_refused(tmp_path):
    other = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path / "effnet.pth"
    torch.save(other.state_dict(), path)
    with pytest.raises(UserError, match="could not be loaded into test_resnet"):
        create_model(ModelConfig(name="test_resnet", weights=str(path)), num_classes=3)


def test_own_benchmark_nets_route_through_the_factory():
    net = create_model(ModelConfig(name="lenet5", pretrained=False), num_classes=10, in_chans=1)
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
