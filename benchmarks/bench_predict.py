"""Throughput of `python -m stages.predict` against the same work done by the stages (README
"Predicting on images").

On the first --images test images of the data root, with the trained pipeline of artifacts/
(dvc repro), in one process:
  infer       stage infer's part alone: stages.nets.inference.predict_crops on the images' crops,
              already made and in memory (what the stage does on a precomputed crop store);
  no files    predict's pipeline without its output files: decode (data.workers threads, the next
              batch while this one runs), coarse detector, crop, network with flip & merge, PnP;
  predict     stages.predict.run --no-overlay, then with the overlay PNGs, into a temporary folder.
Prints each rate and the ratios of predict to infer and to the pipeline without its files.

    python -m benchmarks.bench_predict [--params params.yaml] [--images 100] [--repeats 2]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from stages import predict
from stages.common.params import Params, load_params
from stages.face.frontal import crop_warps
from stages.face.warp import invert_warp, warp_image
from stages.nets.inference import predict_crops
from stages.wcpa.layout import image_path, list_path, read_image, read_list


def test_images(params: Params, count: int, folder: Path) -> list[Path]:
    """The first `count` images of the data root's test list, linked into `folder` under
    distinct names (<subject>_<action>_<img>: predict names its outputs by the image's stem)."""
    root = Path(params.data.root)
    paths = []
    for row in read_list(list_path(root, "test")).iloc[:count].itertuples():
        paths.append(folder / f"{row.subject_id}_{row.facial_action}_{row.img_id}.jpg")
        paths[-1].symlink_to(image_path(root, row).resolve())
    return paths


def crops_of(pipeline: predict.Pipeline, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The crops (N, S, S, 3) uint8 of images and their crop -> full-image warps (N, 2, 3), as predict makes them."""
    images = [read_image(path) for path in paths]
    camera = pipeline.resources.camera
    coarse = pipeline.coarse
    trace = pipeline.detector.trace(images, coarse.refine_passes, coarse.flip_test, settle=coarse.settle)
    model_points = pipeline.resources.template[pipeline.resources.kpt_ind]
    warps = crop_warps(trace[-1], pipeline.reference, pipeline.crop.rotation, camera, model_points)
    crops = np.stack([warp_image(image, warp, pipeline.crop.size) for image, warp in zip(images, warps)])
    return crops, invert_warp(warps)


def rate(work, count: int, repeats: int) -> float:
    """Images per second of the best of `repeats` runs of work()."""
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return count / best


def without_files(pipeline: predict.Pipeline, paths: list[Path], workers: int) -> None:
    """predict's loop (stages.predict.run) with its output files left out."""
    cameras = predict.camera_choice(pipeline.resources, None, None)
    with ThreadPoolExecutor(workers) as readers, ThreadPoolExecutor(workers) as pool:
        for chunk, images in predict.batches(paths, pipeline.settings.batch_size, readers):
            for _ in predict.predict_batch(pipeline, images, chunk, cameras, pool):
                pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    with tempfile.TemporaryDirectory() as folder:
        measure(params, test_images(params, args.images, Path(folder)), args.repeats)


def measure(params: Params, paths: list[Path], repeats: int) -> None:
    """Print the rates and ratios of the module doc for images `paths`."""
    pipeline = predict.load_pipeline(params)
    crops, inv_warps = crops_of(pipeline, paths)
    camera, n = pipeline.resources.camera, len(paths)
    rates = {"infer (crops in memory)": rate(lambda: predict_crops(pipeline.model, crops, inv_warps, pipeline.perm,
                                                                   camera, pipeline.settings), n, repeats),
             "predict without files": rate(lambda: without_files(pipeline, paths, params.data.workers),
                                           n, repeats)}
    for overlay in (False, True):
        with tempfile.TemporaryDirectory() as out:
            rates[f"predict{'' if overlay else ' --no-overlay'}"] = rate(
                lambda: predict.run(params, paths, Path(out) / str(time.perf_counter_ns()), overlay=overlay),
                n, repeats)
    print(f"{n} test images of {params.data.root}, best of {repeats}")
    for name, value in rates.items():
        print(f"  {name:28s} {value:8.1f} images/s")
    for name in ("predict --no-overlay", "predict"):
        print(f"  {name}: {rates[name] / rates['infer (crops in memory)']:.2f} of infer, "
              f"{rates[name] / rates['predict without files']:.2f} of predict without files")


if __name__ == "__main__":
    main()
