"""Mixed precision: the autocast type per device, float32 heads under bfloat16 autocast."""
import pytest
import torch

from stages.common import precision
from stages.nets.model import FaceNet, NetConfig
from stages.common.precision import amp_dtype, autocast, needs_grad_scaler


def test_autocast_type_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert amp_dtype(cuda, True) is torch.float16 and needs_grad_scaler(torch.float16)
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
