"""Grad-CAM: target layers per architecture, the package's map against a hand-written Grad-CAM, a
network whose answer is known, and the run-level explainer (cache, CLI, untrusted checkpoints)."""

from __future__ import annotations

import os
import statistics
import time

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from evidence_factory import add_best_checkpoint
from PIL import Image
from run_factory import make_run
from torch import nn

from dermlow.errors import UserError
from dermlow.evidence import saliency
from dermlow.models.paper_nets import create_net
from dermlow.rundir import files


@pytest.mark.parametrize(("name", "layer"), [
    ("resnet10t", "layer4"), ("densenet121", "features.norm5"), ("mobilenetv3_small_050", "blocks.-1"),
    ("efficientnet_b0", "bn2"), ("convnext_atto", "stages.-1"), ("lenet5", "features"),
    ("densenet_bc_100", "features.-3"), ("wrn_28_2", "features.-3"), ("regnetx_002", "s4"),  # timm feature_info
])
def test_target_layer_table(name, layer):
    net = create_net(name, num_classes=3, in_chans=3) if name in ("lenet5", "densenet_bc_100", "wrn_28_2") else \
        timm.create_model(name, pretrained=False, num_classes=3)
    assert saliency.default_layer(name, net) == layer
    x = torch.randn(1, 3, 32, 32)
    out = {}
    handle = saliency.resolve_layer(net, layer).register_forward_hook(lambda m, i, o: out.setdefault("o", o))
    net.eval()(x)
    handle.remove()
    assert out["o"].ndim == 4  # a spatial feature map, as Grad-CAM needs


def test_unknown_layer_is_a_user_error():
    net = timm.create_model("resnet10t", pretrained=False, num_classes=3)
    with pytest.raises(UserError, match="no module 'layer9'"):
        saliency.resolve_layer(net, "layer9")
    assert saliency.resolve_layer(net, "layer4.-1") is net.layer4[-1]


def manual_grad_cam(net: nn.Module, layer: nn.Module, x: torch.Tensor, target: int) -> np.ndarray:
    """Grad-CAM from its definition: channel weights = spatial mean of d logit / d A, map =
    ReLU(sum_k w_k A_k), upsampled bilinearly to the input and scaled to [0, 1]."""
    saved = {}
    handle = layer.register_forward_hook(lambda m, i, o: saved.setdefault("a", o))
    net.eval().zero_grad()
    logit = net(x)[0, target]
    handle.remove()
    grads = torch.autograd.grad(logit, saved["a"])[0]
    cam = F.relu((grads.mean(dim=(2, 3), keepdim=True) * saved["a"]).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    cam = cam - cam.min()
    return cam / cam.max() if cam.max() > 0 else cam


def test_package_grad_cam_equals_the_definition():
    torch.manual_seed(1)
    net = timm.create_model("resnet10t", pretrained=False, num_classes=4)
    x = torch.randn(1, 3, 128, 128)
    layer = saliency.resolve_layer(net, "layer4")
    for target in (0, 1, 3):  # (class 2's map is all zero for this random net: nothing to compare)
        got, probs = saliency.grad_cam(net, x, target, layer)
        want = manual_grad_cam(net, layer, x, target)
        assert got.shape == (128, 128) and got.min() == 0 and got.max() == pytest.approx(1) and want.std() > 0.1
        np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(probs, net(x).softmax(1)[0].detach().numpy(), atol=1e-5)
    _, probs = saliency.grad_cam(net, x, None, layer)
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


class TwoSpots(nn.Module):
    """Class 0's logit is the mean of channel 0, class 1's of channel 1: the answer is known."""

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))

    def forward(self, x):
        return self.features(x).relu().mean(dim=(2, 3))


def test_map_lights_up_where_the_class_evidence_is():
    x = torch.zeros(1, 2, 32, 32)
    x[0, 0, 2:10, 2:10] = 1.0  # class 0's evidence: top left
    x[0, 1, 22:30, 22:30] = 2.0  # class 1's (stronger, so predicted): bottom right
    net = TwoSpots()
    top_left, _ = saliency.grad_cam(net, x, 0, net.features)
    bottom_right, probs = saliency.grad_cam(net, x, None, net.features)
    assert probs.argmax() == 1
    assert top_left[2:10, 2:10].mean() > 0.9 and top_left[22:30, 22:30].mean() < 0.1
    assert bottom_right[22:30, 22:30].mean() > 0.9 and bottom_right[2:10, 2:10].mean() < 0.1


def test_overlay_enlarges_and_blends():
    image = np.full((40, 30, 3), 128, np.uint8)
    cam = np.zeros((40, 30), np.float32)
    cam[:20] = 1.0
    out = saliency.overlay(image, cam, min_side=120)
    assert out.shape == (160, 120, 3) and out.dtype == np.uint8
    assert out[:60, :, 0].mean() > out[100:, :, 0].mean()  # hot (red) where the map is high
    assert saliency.overlay(image[..., 0], cam).shape[2] == 3  # greyscale input


@pytest.fixture
def run_with_checkpoint(tmp_path):
    run_dir = make_run(tmp_path, epochs=3, image_size=64)
    add_best_checkpoint(run_dir)
    return run_dir


def test_explainer_caches_per_checkpoint_and_image(run_with_checkpoint, monkeypatch):
    from dermlow.training import explain

    ex = explain.Explainer(run_with_checkpoint)
    ids = ex.manifest["image_id"].tolist()
    first = ex.explain(ids[0], "given")
    assert not first.cached and first.path.is_file() and first.path.is_relative_to(run_with_checkpoint / ".cache")
    assert first.target_class == first.given == int(ex.manifest.loc[0, "label"])
    assert first.overlay.shape[:2] == (256, 256)  # 40 px network input, enlarged
    predicted = ex.explain(ids[0], "predicted")
    assert predicted.target_class == predicted.predicted == int(np.argmax(predicted.probs))
    monkeypatch.setattr(explain, "grad_cam", lambda *a, **k: pytest.fail("recomputed a cached map"))
    again = explain.Explainer(run_with_checkpoint).explain(ids[0], "given")
    assert again.cached and np.array_equal(again.overlay, first.overlay)
    best = run_with_checkpoint / files.BEST
    os.utime(best, ns=(best.stat().st_atime_ns, best.stat().st_mtime_ns + 10**9))  # a new best checkpoint
    with pytest.raises(pytest.fail.Exception):
        explain.Explainer(run_with_checkpoint).explain(ids[0], "given")


def test_explain_cli_writes_the_overlay(run_with_checkpoint, tmp_path, capsys):
    from dermlow.cli.main import main

    image_id = "ISIC_0000003"
    out = tmp_path / "cam.png"
    assert main(["explain", str(run_with_checkpoint), image_id, "--out", str(out), "--target", "given"]) == 0
    text = capsys.readouterr().out
    assert f"{image_id}: given" in text and "layer layer4" in text
    with Image.open(out) as im:
        assert im.size == (256, 256) and im.mode == "RGB"
    assert main(["explain", str(run_with_checkpoint), "no-such-image"]) == 2
    assert "not in" in capsys.readouterr().err


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_that_needs_unpickling_code_is_refused(run_with_checkpoint):
    from dermlow.training.explain import Explainer

    ckpt = torch.load(run_with_checkpoint / files.BEST, weights_only=True)
    torch.save({**ckpt, "extra": Payload()}, run_with_checkpoint / files.BEST)
    with pytest.raises(UserError, match="plain-data checkpoint"):
        Explainer(run_with_checkpoint)


def test_grad_cam_is_well_under_a_second_per_image_on_cpu(tmp_path):
    """The demo setup: resnet10t at 80 px resized, 64 px crop (configs/demo.yaml). CPU time of this
    process on one thread, so that other processes on a shared machine do not make it flaky
    (wall times: docs/evidence.md)."""
    from dermlow.training.explain import Explainer

    run_dir = make_run(tmp_path, epochs=2, image_size=96)
    ckpt = add_best_checkpoint(run_dir, model="resnet10t")
    saved = torch.load(ckpt, weights_only=True)
    saved["config"]["data"].update(image_size=80, crop_size=64)
    torch.save(saved, ckpt)
    ex = Explainer(run_dir, cache=False)
    ids = ex.manifest["image_id"].tolist()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ex.explain(ids[0])  # warm-up
        times = []
        for image_id in ids[1:6]:
            t0 = time.process_time()
            ex.explain(image_id)
            times.append(time.process_time() - t0)
    finally:
        torch.set_num_threads(threads)
    assert statistics.median(times) < 0.5, times
