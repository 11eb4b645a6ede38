"""Mixed precision and memory layout: the autocast type per device (CUDA capability patched),
float32 heads under bfloat16 autocast, channels_last networks equal to NCHW ones on the CPU."""
import contextlib

import pytest
import torch

from stages.coarse.model import LandmarkNet
from stages.common import precision
from stages.nets.model import FaceNet, NetConfig
from stages.common.precision import amp_dtype, autocast, memory_format, needs_grad_scaler, place_network


@pytest.mark.parametrize("bf16", [True, False])
def test_cuda_autocast_type_follows_native_bfloat16_support(monkeypatch, bf16):
    """A GPU before Ampere (V100, T4) emulates bfloat16, which torch counts as support by default:
    it gets float16 with the GradScaler."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    dtype = amp_dtype(torch.device("cuda"), True)
    assert dtype is (torch.bfloat16 if bf16 else torch.float16)
    assert needs_grad_scaler(dtype) is not bf16
    assert amp_dtype(torch.device("cuda", 1), False) is None


def test_autocast_type_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cuda, False) is None and amp_dtype(cpu, False) is None
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)
    assert amp_dtype(cpu, True) is torch.bfloat16 and not needs_grad_scaler(torch.bfloat16)
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: False)
    assert amp_dtype(cpu, True) is None and not needs_grad_scaler(None)


def test_float32_context_is_a_no_op():
    with autocast(torch.device("cpu"), None):
        assert not torch.is_autocast_enabled("cpu")
    with autocast(torch.device("cpu"), torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16


def _random_net() -> FaceNet:
    torch.manual_seed(0)
    config = NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=64, n_verts=50, n_components=8)
    model = FaceNet(config).eval()
    model.shape.set_basis(torch.zeros(50, 3), torch.linalg.qr(torch.randn(150, 8))[0].T.reshape(8, 50, 3),
                          torch.full((8,), 0.005))
    for fc in (model.landmarks.mu, model.landmarks.sigma, model.shape.fc):
        torch.nn.init.normal_(fc.weight, std=0.02)
    return model


def test_heads_stay_float32_and_close_to_the_float32_network_under_bfloat16():
    """The backbone runs in bfloat16, the heads in float32: positions within a fraction of a pixel."""
    model = _random_net()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        reference = model(images)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(images)
    for key in ("mu", "sigma", "verts", "coeffs"):
        assert mixed[key].dtype == torch.float32, key
    spread = (reference["mu"] - reference["mu"].mean((0, 1))).abs().mean()
    error = (mixed["mu"] - reference["mu"]).abs().mean()
    assert error < 0.05 * spread, (float(error), float(spread))
    assert (mixed["coeffs"] - reference["coeffs"]).abs().mean() < 0.05 * reference["coeffs"].abs().mean()


@pytest.mark.skipif(not precision.cpu_has_bf16(), reason="this CPU has no native bfloat16")
def test_bfloat16_training_step_updates_the_heads_in_float32():
    model = _random_net().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    with autocast(torch.device("cpu"), amp_dtype(torch.device("cpu"), True)):
        out = model(torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8))
    loss = out["mu"].square().mean() + out["coeffs"].square().mean()
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and (p.grad is None or torch.isfinite(p.grad).all())
               for p in model.parameters())


def _stem_input_layouts(backbone: torch.nn.Module, model: torch.nn.Module, images: torch.Tensor):
    """model(images) and whether the backbone's input was channels_last (and not also NCHW)."""
    seen = []
    handle = backbone.register_forward_pre_hook(
        lambda module, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)
                                         and not args[0].is_contiguous()))
    with torch.no_grad():
        out = model(images)
    handle.remove()
    return out, seen[0]


def test_channels_last_facenet_equals_the_nchw_one_on_cpu():
    model = _random_net()
    images = torch.randint(0, 256, (4, 3, 64, 64), dtype=torch.uint8)
    reference, last = _stem_input_layouts(model.backbone, model, images)
    assert not last
    model.to(memory_format=torch.channels_last)
    mixed, last = _stem_input_layouts(model.backbone, model, images)
    assert last and model.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    for key in ("mu", "sigma", "verts", "coeffs"):
        torch.testing.assert_close(mixed[key], reference[key], rtol=1e-4, atol=1e-4 * reference[key].abs().max())


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small"])
def test_channels_last_detector_equals_the_nchw_one_on_cpu(backbone):
    torch.manual_seed(0)
    net = LandmarkNet(backbone, 5, width=16).eval()
    images = torch.rand(2, 3, 96, 96)
    reference, last = _stem_input_layouts(net.blocks[0], net, images)
    assert not last
    net.to(memory_format=torch.channels_last)
    mixed, last = _stem_input_layouts(net.blocks[0], net, images)
    assert last
    torch.testing.assert_close(mixed, reference, rtol=1e-4, atol=1e-3)     # input px of a 96 px image


def test_place_network_keeps_the_cpu_network_nchw_and_its_outputs_bit_identical():
    assert memory_format(torch.device("cuda")) is torch.channels_last
    assert memory_format(torch.device("cpu")) is torch.contiguous_format
    model = _random_net()
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        reference = model(images)
        placed = place_network(model, torch.device("cpu"))
        out = placed(images)
    assert placed is model and all(p.is_contiguous() for p in model.parameters())
    assert all(torch.equal(out[key], reference[key]) for key in reference)
