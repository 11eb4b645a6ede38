"""Benchmark helpers that CI does not otherwise run: the random inference model and crop store of bench_infer,
the params of bench_train --profile / --set, bench_scale's extrapolation arithmetic and its
replicated rows, and the chunk timings of bench_pnp --chunks."""
import argparse
import importlib
import re
import shlex
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.bench_coarse_predict import pass_errors
from benchmarks.bench_crop import CropLoops, synthetic_val
from benchmarks.bench_data import replicate
from benchmarks.bench_infer import bench_model, write_store
from benchmarks.bench_pnp import chunk_shapes, chunk_times
from benchmarks.bench_scale import extrapolate_hours, marginal_seconds, real_work
from benchmarks.proc import run_child
from benchmarks.bench_train import bench_params
from stages.common.params import load_params
from stages.synthetic.topology import N_VERTS
from stages.nets.model import NetConfig
from stages.wcpa.layout import image_path, info_path, landmarks_path
from tests.stages.tiny_data import write_tiny_root

ROOT = Path(__file__).resolve().parents[2]


def test_bench_coarse_predict_pass_errors_are_point_distances_per_pass():
    """Two passes of one image of 2 points: off by (3, 4) and (0, 0), then by (0, 1) and (0, 1)."""
    target = np.zeros((1, 2, 2))
    trace = np.array([[[[3.0, 4.0], [0.0, 0.0]]], [[[0.0, 1.0], [0.0, -1.0]]]])
    first, second = pass_errors(trace, target)
    assert (first["mean"], first["median"], second["mean"], second["p95"]) == (2.5, 2.5, 1.0, 1.0)
    assert first["p95"] == pytest.approx(4.75)     # linear between 0 and 5


def test_bench_infer_model_predicts_the_mean_landmarks_and_a_mesh_near_the_template():
    config = NetConfig(depth=18, coordconv=True, shape_head="pca", crop_size=32, n_verts=10, n_components=4)
    rng = np.random.default_rng(0)
    template, mean_uv = rng.normal(0, 0.05, (10, 3)), rng.uniform(8, 24, (10, 2))
    model = bench_model(config, template, mean_uv)
    with torch.no_grad():
        out = model(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8))
    np.testing.assert_allclose(out["mu"].numpy(), np.broadcast_to(mean_uv, (2, 10, 2)), atol=1e-4)
    np.testing.assert_allclose(out["verts"].numpy(), np.broadcast_to(template, (2, 10, 3)), atol=1e-4)


def test_bench_infer_store_is_a_finished_crop_run(tmp_path):
    warp = np.array([[0.5, 0.0, -10.0], [0.0, 0.5, -20.0]])
    store = write_store(tmp_path / "crops", 5, 16, warp)
    assert len(store) == 5 and store.images.shape == (5, 16, 16, 3) and store.run
    np.testing.assert_allclose(store.inv_warps[3], [[2.0, 0.0, 20.0], [0.0, 2.0, 40.0]])


def test_bench_train_profile_params_drop_the_pretrained_weights_and_take_overrides():
    args = argparse.Namespace(params=str(ROOT / "params.yaml"), profile="paper", set=["train.batch_size=8"])
    params = bench_params(args)
    assert params.train.depth == 50 and params.crop.size == 256
    assert params.train.pretrained is False and params.train.batch_size == 8


def test_bench_scale_extrapolates_seconds_per_image_times_images_times_epochs():
    assert extrapolate_hours(0.01, 356_640, 10) == pytest.approx(9.9067, abs=1e-4)   # 35,664 s
    assert extrapolate_hours(2.0, 1800) == pytest.approx(1.0)
    assert marginal_seconds((10.0, 40.0), (1000, 4000)) == pytest.approx(0.01)      # start-up cancels
    assert marginal_seconds((12.0, 30.0), (1000, 4000)) == pytest.approx(0.006)
    assert marginal_seconds((30.0, 29.0), (1000, 4000)) == pytest.approx(29.0 / 4000)   # noise: the mean


def test_bench_scale_real_work_counts_the_real_images_and_the_paper_epochs():
    work = real_work(load_params(ROOT / "params.yaml").replace(coarse_train={"epochs": 30}, train={"epochs": 10},
                                                                finetune={"epochs": 4}))
    assert work["coarse_train"][:2] == (356_640, 30) and work["train"][:2] == (356_640, 10)
    assert work["finetune"][:2] == (356_640, 4)
    val, test = 71_328, 447_185 - 356_640                 # the val split: 0.2 of the training list
    assert work["crop"][:2] == (447_185, 1) and work["infer"][:2] == (val + test, 1)
    assert work["baseline"][:2] == (356_640 - val, 1) and work["pca"][:2] == (356_640, 1)      # train + val labels
    assert work["evaluate"][:2] == (val + test, 2) and work["submit"][:2] == (test, 2)       # infer's and baseline's


def test_a_childs_workers_peak_counts_the_loky_pool_it_leaves_running():
    code = ("import json, sys, numpy as np\n"
            "from benchmarks.proc import peak_kb, workers_peak_kb\n"
            "from stages.common.processes import ordered_map\n"
            "def work(n):\n    return float(np.ones(n).sum())\n"
            "list(ordered_map(work, [(40_000_000,), (10,)], 2))\n"    # 320 MB in a loky worker, a number back
            "print(json.dumps({'self': peak_kb(), 'workers': workers_peak_kb()}))")
    peaks = run_child(code, "workers", {})
    assert peaks["workers"] > 300_000 > peaks["self"]


def test_replicated_rows_are_new_subjects_of_the_same_size_linked_to_the_originals(tmp_path):
    table = write_tiny_root(tmp_path, n_train=6, n_test=1)["train"]
    rows = replicate(tmp_path, table, 15)
    assert len(rows) == 15 and len(set(map(tuple, rows[["subject_id", "facial_action", "img_id"]].values))) == 15
    assert rows.iloc[:6].equals(table.iloc[:6].reset_index(drop=True))
    frames = rows.groupby("subject_id").size()
    assert frames.max() <= table.groupby("subject_id").size().max()
    for k in (6, 14):
        copy, source = rows.iloc[k], table.iloc[k % 6]
        assert copy.subject_id == f"{source.subject_id}x{k // 6}" and copy.img_id == source.img_id
        for path_of in (image_path, info_path, landmarks_path):
            assert path_of(tmp_path, copy).read_bytes() == path_of(tmp_path, source).read_bytes()


def test_bench_pnp_chunks_times_the_finetune_shapes():
    shapes = chunk_shapes()
    assert shapes["paper"] == (64, 512, 4, N_VERTS)          # pnp_points 0: every vertex
    assert set(shapes) == {"params.yaml", "paper"} and min(min(s) for s in shapes.values()) > 0
    times = chunk_times((2, 8, 2, 12), [2, 16], repeats=1)
    assert set(times) == {2, 16} and all(0 < t < 60 for t in times.values())


def test_the_best_reference_is_the_compiled_channels_last_backbone():
    import torch

    from benchmarks.bench_train import best_reference
    from stages.nets.backbone import build_backbone
    net, _ = build_backbone(18, 3)
    compiled, images, amp = best_reference(net, torch.randn(2, 3, 32, 32), torch.device("cpu"))
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is net
    assert images.is_contiguous(memory_format=torch.channels_last)
    assert net.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert amp in (None, torch.bfloat16)


def test_bench_val_case_is_solved_to_its_noise_on_any_thread_count():
    """bench_val's synthetic val samples (landmarks with 1 px noise, meshes 1 mm off): evaluate
    recovers their poses (a score of tens of mm, not hundreds) and the landmark error is the
    noise's mean norm (sqrt(pi / 2) px), with the same figures on 1 and 3 threads; every phase is timed."""
    from benchmarks.bench_val import phase_seconds, val_case
    from stages.face.warp import invert_warp
    from stages.nets.dataset import crop_targets
    from stages.nets.validate import evaluate
    from tests.unit.pnp_cases import challenge_camera
    case, camera = val_case(12), challenge_camera()
    targets = crop_targets(camera, case["verts"], case["poses"], case["warps"])
    figures = [evaluate(case["pred"], invert_warp(case["warps"]), camera, case["verts"], case["poses"], targets,
                        "SQPNP", 0, "crop", workers) for workers in (1, 3)]
    assert figures[0] == figures[1]
    assert figures[0]["pnp_failed"] == 0 and figures[0]["score"] < 30
    assert figures[0]["landmark_full_px"] == pytest.approx(np.sqrt(np.pi / 2), abs=0.1)
    assert set(phase_seconds(case, 2)) == {"all", "pnp", "errors"}


def test_bench_crops_synthetic_images_crop_on_both_paths(tmp_path):
    """bench_crop --synth, which gpu_check runs: 9 synthetic faces through both decode paths."""
    params = load_params(ROOT / "params.yaml").replace(data={"workers": 2}, crop={"chunk": 4})
    root, table, warps = synthetic_val(params, tmp_path, 9)
    assert warps.shape == (9, 2, 3) and np.isfinite(warps).all()
    loops = CropLoops(params, root, table, warps, tmp_path / "work")
    for name in ("opencv", "torch"):
        loops.crop(None if name == "opencv" else torch.device("cpu"), name)
        assert loops.store(name).reshape(9, -1).max(1).min() > 0
    assert np.abs(loops.store("opencv").astype(int) - loops.store("torch")).mean() < 0.5


def gpu_check_commands() -> list[tuple[str, list[str]]]:
    """(module, argv) of every `python -m benchmarks.<module> ...` of benchmarks/gpu_check.sh, its
    continuation lines joined and its shell variables given example values."""
    script = (ROOT / "benchmarks/gpu_check.sh").read_text().replace("\\\n", " ")
    values = {"${FINETUNE_SET:+--set $FINETUNE_SET}": "", "${COARSE_SET:+--set $COARSE_SET}": "",
              "${COMPILED_DECODE:-opencv}": "opencv", "$augment": "opencv", "$work": "/tmp/work", "$rows": "2048",
              "$profile": "gpu"}
    commands = []
    for line in script.splitlines():
        match = re.search(r"python -m (benchmarks\.\w+)(.*)", line)
        if match:
            args = match.group(2)
            for name, value in values.items():
                args = args.replace(name, value)
            assert "$" not in args, f"gpu_check.sh: give {args!r} an example value here"
            commands.append((match.group(1), shlex.split(args)))
    return commands


class _Parsed(Exception):
    """Raised by the patched parse_args once a command line has parsed."""


@pytest.mark.parametrize("module, argv", gpu_check_commands(), ids=lambda value: str(value)[:60])
def test_every_gpu_check_command_line_parses(module, argv, monkeypatch):
    """A GPU session is minutes long: a misspelt option in gpu_check.sh would spend one."""
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        parse(self, args, namespace)
        raise _Parsed
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
    monkeypatch.setattr(sys, "argv", [module, *argv])
    with pytest.raises(_Parsed):
        importlib.import_module(module).main()
