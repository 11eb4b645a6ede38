"""coarse_predict's marginal rate and what each refine pass and the flip test buy (issue 17).

rate: the stage's own batch loop (stages.coarse_predict.predict_split: the worker threads' reads,
each batch's decode, every pass's warps and forwards, the rows' store) on the first --images
rows of a split, timed after one warm-up batch (the networks' first calls and cuDNN's autotuning
of the batch's shapes), with the stage's settings (coarse_predict.*, data.workers). The stage's
metrics.json times whole splits, start-up included: on a GPU, at a few thousand rows, that is
most of it. --images should be a multiple of coarse_predict.batch_size.

passes: the trained detector's landmarks after each pass (Detector.trace, up to --passes refine
passes), without and with the flip test, against the projected GT: mean, median and 95th
percentile px over all points, with the network forwards each image costs (1 + passes, twice the
refine passes with the flip test). A refine pass that no longer lowers the error is one forward
(two with the flip test) an image for nothing. Then, for each --settle value, the landmarks when
each image stops refining once a pass moves it less (coarse_predict.settle), with the refine
passes and forwards an image that took.

    python -m benchmarks.bench_coarse_predict [--images 512] [--split val] [--passes 6] [--settle 0.005 0.01]
        [--params params.yaml] [--set coarse_predict.batch_size=256 ...]

Needs the data root, the split lists (dvc repro split) and the detector (dvc repro coarse_train).
"""
from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.gpu_probe import sync
from stages.coarse.detector import Detector
from stages.coarse.targets import load_targets
from stages.coarse_predict import predict_split
from stages.common.badinput import BadInputs
from stages.common.cropstore import ResumableRows
from stages.common.device import pick_device
from stages.common.params import Params, apply_overrides, load_params
from stages.wcpa.layout import load_resources, read_image, sample_files, split_tables

MODEL = Path("artifacts/coarse_train/model.pt")


def pass_errors(trace: np.ndarray, target: np.ndarray) -> list[dict[str, float]]:
    """Landmarks of every pass (P, N, L, 2) and the GT (N, L, 2), full px -> per pass the mean,
    median and 95th percentile of the points' distances (px)."""
    errors = np.linalg.norm(trace - target[None], axis=-1).reshape(len(trace), -1)
    return [{"mean": float(e.mean()), "median": float(np.median(e)), "p95": float(np.percentile(e, 95))}
            for e in errors]


def rate(params: Params, detector: Detector, table, rows: int) -> None:
    cfg, data = params.coarse_predict, params.data
    cfg = dataclasses.replace(cfg, flip_test=detector.usable_flip_test(cfg.flip_test))
    size = load_resources(data.root).camera.size
    bad = BadInputs(skip=data.skip_bad, max_fraction=data.max_bad_fraction)
    with tempfile.TemporaryDirectory() as work:
        def run(part, name: str) -> float:
            store = ResumableRows(Path(work) / name, name, (len(part), detector.config["n_points"], 2), np.float64)
            start = time.perf_counter()
            predict_split(detector, data.root, part, size, cfg, data.workers, bad, name, store)
            sync(detector.device)
            return time.perf_counter() - start

        run(table.iloc[:cfg.batch_size], "warm-up")
        seconds = run(table.iloc[:rows], "timed")
    print(f"coarse_predict's loop: {rows} images in {seconds:.2f} s = {rows / seconds:.1f} images/s after a "
          f"warm-up batch (batch {cfg.batch_size}, {cfg.refine_passes} refine passes, flip test {cfg.flip_test}, "
          f"decode {cfg.decode}, {data.workers} workers, {detector.device})")


def passes(params: Params, detector: Detector, table, refine_passes: int, settles: list[float]) -> None:
    data, cfg = params.data, params.coarse_predict
    resources = load_resources(data.root)
    target, kept = load_targets(data.root, table, resources, BadInputs(skip=False, max_fraction=0.0), data.workers)
    paths = sample_files(data.root, table, "image")
    flips = [False] + ([True] if detector.flip_order is not None else [])

    def traced(flip: bool, settle: float = 0.0) -> np.ndarray:
        return np.concatenate([detector.trace([read_image(p, resources.camera.size, rgb=False)
                                               for p in paths[s:s + cfg.batch_size]], refine_passes, flip, bgr=True,
                                              settle=settle)
                               for s in range(0, len(paths), cfg.batch_size)], axis=1)[:, kept]

    for flip in flips:
        rows = pass_errors(traced(flip), target)
        print(f"flip test {flip}: {len(kept)} images")
        for k, row in enumerate(rows):
            forwards = 1 + k * (1 + flip)
            print(f"  {'locate' if k == 0 else f'refine {k}':>8}: mean {row['mean']:.3f} median {row['median']:.3f} "
                  f"p95 {row['p95']:.3f} px  ({forwards} forwards an image)")
        for settle in settles:
            trace = traced(flip, settle)
            run = (trace[1:] != trace[:-1]).any((-1, -2)).sum(0).mean()     # the refine passes each image took
            row = pass_errors(trace[-1:], target)[0]
            print(f"  settle {settle:g}, at most {refine_passes} refine passes: mean {row['mean']:.3f} median "
                  f"{row['median']:.3f} p95 {row['p95']:.3f} px  ({run:.2f} refine passes, "
                  f"{1 + run * (1 + flip):.2f} forwards an image)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", nargs="?", default="rate", choices=["rate", "passes"])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    parser.add_argument("--split", default="val", choices=["train", "val"], help="a labelled split")
    parser.add_argument("--images", type=int, default=512, help="the split's first rows")
    parser.add_argument("--passes", type=int, default=6, help="passes: refine passes traced")
    parser.add_argument("--settle", type=float, nargs="*", default=[0.005, 0.01, 0.02],
                        help="passes: also each settle value (stages.coarse.detector) with at most --passes passes")
    args = parser.parse_args()
    params = apply_overrides(load_params(args.params), args.set)
    detector = Detector(MODEL, pick_device("auto"), params.data.workers, params.coarse_predict.amp)
    table = split_tables(params.data.root, Path("artifacts/split"))[args.split].iloc[:args.images]
    if args.mode == "rate":
        rate(params, detector, table, len(table))
    else:
        passes(params, detector, table, args.passes, args.settle)


if __name__ == "__main__":
    main()
