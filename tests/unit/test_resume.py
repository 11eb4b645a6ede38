"""stages.common.resume: the one checkpoint format of the three trainers."""
import logging
import sys

import torch

from stages.common.resume import Checkpoints, capture, fingerprint, interned, restore


def make_run(seed: int = 0):
    """A tiny network, Adam, a disabled scaler and a step schedule, after one optimiser step."""
    torch.manual_seed(seed)
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    return net, optimizer, scaler, scheduler


def test_restore_gives_back_weights_optimiser_schedule_and_rng(tmp_path):
    net, optimizer, scaler, scheduler = make_run()
    store = Checkpoints(tmp_path, fingerprint({"lr": 0.1}))
    store.save(capture(4, {"net": net}, optimizer, scaler, scheduler))
    expected_draw = torch.rand(5)
    other, other_opt, other_scaler, other_sched = make_run(seed=1)
    start = restore(store.latest(epochs=10), {"net": other}, other_opt, other_scaler, other_sched)
    assert start == 5 and torch.equal(torch.rand(5), expected_draw)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), other.state_dict().values()))
    assert other_sched.get_last_lr() == scheduler.get_last_lr() == [0.05]
    assert torch.equal(other_opt.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])


def test_a_disabled_scalers_state_resumes_under_an_enabled_scaler_and_back(tmp_path):
    """A run moved from the CPU (or bfloat16) to float16 on a GPU before Ampere: the empty state
    of a disabled GradScaler leaves the enabled one at its initial scale (torch refuses to load
    it); the other way, the enabled one's state is ignored by the disabled one."""
    net, optimizer, scaler, scheduler = make_run()
    store = Checkpoints(tmp_path, "a")
    store.save(capture(0, {"net": net}, optimizer, scaler, scheduler))
    enabled = torch.amp.GradScaler("cpu", enabled=True, init_scale=1024.0)
    assert restore(store.latest(epochs=3), {"net": net}, optimizer, enabled, scheduler) == 1
    assert enabled.get_scale() == 1024.0
    store.save(capture(1, {"net": net}, optimizer, enabled, scheduler))
    assert restore(store.latest(epochs=3), {"net": net}, optimizer, scaler, scheduler) == 2
    assert not scaler.is_enabled()


def test_latest_keeps_the_newest_and_ignores_other_runs_longer_runs_and_incomplete_files(tmp_path, caplog):
    net, optimizer, scaler, _ = make_run()
    store = Checkpoints(tmp_path, "a", keep=2)
    for epoch in range(3):
        store.save(capture(epoch, {"net": net}, optimizer, scaler))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_001.pt", "epoch_002.pt"]
    assert store.latest(epochs=3)["epoch"] == 2
    with caplog.at_level(logging.WARNING):
        assert store.latest(epochs=2)["epoch"] == 1          # 3 epochs done is more than asked for
        assert Checkpoints(tmp_path, "b").latest(epochs=3) is None
        torch.save({"epoch": 5, "fingerprint": "a"}, tmp_path / "epoch_005.pt")
        assert store.latest(epochs=9)["epoch"] == 2
    assert "other params" in caplog.text and "lacks modules" in caplog.text


def test_fingerprint_follows_content_not_key_order():
    assert fingerprint({"a": 1, "b": [2]}) == fingerprint({"b": [2], "a": 1}) != fingerprint({"a": 2, "b": [2]})


def test_saving_never_removes_the_file_just_written(tmp_path):
    """A stale file of another run with a later epoch (kept over an interruption) must not make
    save remove this run's newest checkpoint."""
    net, optimizer, scaler, _ = make_run()
    Checkpoints(tmp_path, "old", keep=1).save(capture(1, {"net": net}, optimizer, scaler))
    store = Checkpoints(tmp_path, "new", keep=1)
    store.save(capture(0, {"net": net}, optimizer, scaler))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000.pt"]
    assert store.latest(epochs=1)["epoch"] == 0


def test_saved_strings_are_interned_and_state_dicts_keep_their_metadata():
    """Equal states pickle to equal bytes only when their equal strings are one object."""
    net = torch.nn.BatchNorm1d(3)
    state = {"modules": {"net": net.state_dict()}, "params": {"".join(["l", "r"]): 0.1}}
    copy = interned(state)
    assert next(iter(copy["params"])) is sys.intern("lr")
    module = copy["modules"]["net"]
    assert type(module) is type(net.state_dict()) and module._metadata == net.state_dict()._metadata
    torch.nn.BatchNorm1d(3).load_state_dict(module)


def test_the_newest_keep_files_stay_while_there_are_fewer(tmp_path):
    net, optimizer, scaler, _ = make_run()
    store = Checkpoints(tmp_path, "a", keep=4)
    for epoch in range(3):
        store.save(capture(epoch, {"net": net}, optimizer, scaler))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["epoch_000.pt", "epoch_001.pt", "epoch_002.pt"]
    for epoch in range(3, 6):
        store.save(capture(epoch, {"net": net}, optimizer, scaler))
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"epoch_{e:03d}.pt" for e in range(2, 6)]
