"""The learning-rate multiplier of train/finetune (stages.nets.trainer.lr_factor) against closed forms."""
import math
from dataclasses import replace
from pathlib import Path

import pytest

from stages.common.params import ParamsError, load_params
from stages.nets.trainer import lr_factor

ROOT = Path(__file__).resolve().parents[2]
TRAIN = load_params(ROOT / "params.yaml").train


def _cfg(schedule, warmup_epochs=0.0, epochs=10, min_lr_ratio=0.02):
    return replace(TRAIN, schedule=schedule, warmup_epochs=warmup_epochs, epochs=epochs, min_lr_ratio=min_lr_ratio)


def test_cosine_runs_from_one_to_min_ratio_through_the_half_point():
    cfg = _cfg("cosine")
    assert lr_factor(cfg, 0, 1000) == pytest.approx(1.0)
    assert lr_factor(cfg, 500, 1000) == pytest.approx(0.02 + 0.98 * 0.5)
    assert lr_factor(cfg, 1000, 1000) == pytest.approx(0.02)


def test_warm_up_ramps_linearly_over_its_epochs_then_follows_the_schedule():
    cfg = _cfg("constant", warmup_epochs=2.0, epochs=10)           # 200 of 1000 steps
    assert [lr_factor(cfg, k, 1000) for k in (0, 99, 199, 200, 999)] == pytest.approx([1 / 200, 0.5, 1, 1, 1])
    cosine = _cfg("cosine", warmup_epochs=2.0, epochs=10)
    expected = (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * 0.1))) * 100 / 200
    assert lr_factor(cosine, 99, 1000) == pytest.approx(expected, rel=1e-3)
    assert lr_factor(cosine, 600, 1000) == pytest.approx(lr_factor(_cfg("cosine"), 600, 1000))


def test_a_constant_schedules_rates_are_the_same_floats_whatever_the_epochs():
    """Raising the epochs of a constant schedule resumes (the epochs are not in its fingerprint):
    each step's rate must be bit for bit that of a longer run, a fractional warm-up included."""
    for per_epoch in (2, 3, 7):
        for warmup in (0.3, 0.7, 1.5):
            rates = [[lr_factor(_cfg("constant", warmup, epochs), step, epochs * per_epoch) for step in range(per_epoch)]
                     for epochs in range(2, 7)]
            assert all(r == rates[0] for r in rates), (per_epoch, warmup)


def test_an_unknown_schedule_stops_at_load():
    params = load_params(ROOT / "params.yaml")
    with pytest.raises(ParamsError, match="train.schedule = 'step': must be one of constant, cosine"):
        params.replace(train={"schedule": "step"})
