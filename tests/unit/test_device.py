"""The one device choice (stages.common.device): the three names, CUDA absent or present, and a
misspelt name stopping every caller instead of falling back to the CPU."""
import pytest
import torch

from stages.common.device import pick_device
from stages.nets.inference import InferSettings
from stages.nets.trainer import start_distributed


@pytest.mark.parametrize("cuda", [False, True])
def test_the_three_names(monkeypatch, cuda):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if cuda else "cpu")
    if cuda:
        assert pick_device("cuda", index=1) == torch.device("cuda:1")
    else:
        with pytest.raises(RuntimeError, match="infer.device=cuda but CUDA is not available"):
            pick_device("cuda", "infer.device")


def test_a_misspelt_device_stops_every_caller(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"train.device='cude': expected one of auto, cpu, cuda"):
        start_distributed("cude")
    cfg = type("Cfg", (), dict(batch_size=1, flip_merge="both", pnp=True, pnp_flags="SQPNP",
                               device="GPU", amp=False, workers=0, max_pnp_failures=0))
    with pytest.raises(ValueError, match=r"infer.device='GPU'"):
        InferSettings.of(cfg)
