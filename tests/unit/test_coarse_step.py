"""coarse_train's step with its two passes side by side on two threads (the CPU) against one pass
after the other: the same weights, bit for bit, on one torch thread each."""
import copy

import numpy as np
import torch

from stages.coarse import train as coarse
from stages.coarse.sources import PASSES
from stages.coarse_train import train_config
from stages.common.distributed import Dist
from stages.common.params import load_params

SIZES = {"locate": 64, "refine": 64}


def _batch(rng: np.random.Generator) -> dict:
    return {name: {"image": torch.from_numpy(rng.integers(0, 255, (4, size, size, 3), dtype=np.uint8)),
                   "points": torch.from_numpy(rng.uniform(8, size - 8, (4, 5, 2)).astype(np.float32))}
            for name, size in SIZES.items()}


def _small_nets() -> tuple:
    """The demo's detector config at 64 px with a narrow head, and its nets (seeded) in train mode."""
    cfg = train_config(load_params("params.yaml").replace(coarse_train={
        "locate_size": 64, "refine_size": 64, "head_width": 16}))
    torch.manual_seed(0)
    nets = coarse.build_nets(cfg, 5)
    for net in nets.values():
        net.train()
    return cfg, nets


def _trained(nets: dict, batches: list[dict], cfg, passes) -> dict:
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = coarse.make_optimizer(params, cfg, torch.device("cpu"))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=len(batches), pct_start=0.15)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    losses = [coarse.step(nets, batch, SIZES, optimizer, schedule, scaler, passes) for batch in batches]
    return {"losses": losses, **{name: net.state_dict() for name, net in nets.items()}}


def test_the_passes_side_by_side_train_the_weights_of_one_pass_after_the_other(monkeypatch):
    monkeypatch.setattr(coarse, "usable_cores", lambda: 2)           # one torch thread a pass
    cfg, nets = _small_nets()
    rng = np.random.default_rng(0)
    batches = [_batch(rng) for _ in range(3)]
    before = torch.get_num_threads()
    passes = coarse.pass_threads(Dist(0, 1, torch.device("cpu")))
    try:
        torch.set_num_threads(1)
        alone = _trained(copy.deepcopy(nets), batches, cfg, None)
        side_by_side = _trained(copy.deepcopy(nets), batches, cfg, passes)
    finally:
        passes.shutdown()
        torch.set_num_threads(before)
    assert [float(x) for x in alone["losses"]] == [float(x) for x in side_by_side["losses"]]
    for name in PASSES:
        for key, value in alone[name].items():
            assert torch.equal(value, side_by_side[name][key]), (name, key)
        assert not torch.equal(alone[name]["heatmaps.weight"], nets[name].state_dict()["heatmaps.weight"])


def test_the_passes_run_side_by_side_only_on_the_cpu_in_one_process():
    assert coarse.pass_threads(Dist(0, 1, torch.device("cuda", 0))) is None
    assert coarse.pass_threads(Dist(0, 2, torch.device("cpu"))) is None
    pool = coarse.pass_threads(Dist(0, 1, torch.device("cpu")))
    assert pool is not None and pool._max_workers == len(PASSES)
    pool.shutdown()


def test_a_stand_in_step_leaves_the_batchnorm_statistics_as_they_were():
    """A process that kept no item of a global batch steps on a stand-in weighted 0: inside
    statistics_kept its forward moves no buffer (rank 0's are every process's), where the same
    step outside it does."""
    cfg, nets = _small_nets()
    params = [p for net in nets.values() for p in net.parameters()]
    optimizer = coarse.make_optimizer(params, cfg, torch.device("cpu"))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=2, pct_start=0.15)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    stand_in = {"index": torch.tensor([0]), **coarse.first_item({"index": torch.tensor([0]), **_batch(
        np.random.default_rng(1))})}
    before = {name: copy.deepcopy(net.state_dict()) for name, net in nets.items()}

    def moved() -> list[str]:
        return [f"{name}.{key}" for name, net in nets.items() for key, value in net.named_buffers()
                if not torch.equal(value, before[name][key])]

    with coarse.statistics_kept(nets):
        coarse.step(nets, stand_in, SIZES, optimizer, schedule, scaler, None, 0.0)
    assert moved() == []
    coarse.step(nets, stand_in, SIZES, optimizer, schedule, scaler, None, 0.0)
    assert any(key.endswith("running_mean") for key in moved())
