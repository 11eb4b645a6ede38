"""Synthetic data throughput: images/s of the synth generator on 2 workers (render + JPEG +
labels written), against a reference measured in the same process: encoding and writing an
800x800 JPEG of the same kind of content, with nothing rendered. Wall-clock rates depend on
what else runs on the machine; the CPU-time figures (time.process_time in the workers) do not.

    python -m benchmarks.bench_synth [--images 120] [--workers 2]
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from stages.common.params import load_params
from stages.synth import config
from stages.synthetic.background import random_background
from stages.synthetic.synth_data import CHUNK, _write_chunk, plan, write_lists, write_resources


def _timed_chunk(cfg, chunk, root: Path, gt: Path) -> float:
    """Write a chunk of samples; returns the CPU seconds this worker spent on it."""
    start = time.process_time()
    _write_chunk(cfg, chunk, root, gt)
    return time.process_time() - start


def bench_generator(cfg, root: Path, gt: Path, images: int, workers: int) -> tuple[float, float]:
    """Wall seconds and summed worker CPU seconds to render and write `images` samples on
    `workers` processes (warm workers)."""
    specs = plan(cfg)[:images]
    write_lists(root, specs)
    write_resources(root, cfg, sum(s.split == "test" for s in specs))
    chunks = [specs[k:k + CHUNK] for k in range(0, len(specs), CHUNK)]
    with Parallel(n_jobs=workers) as parallel:
        parallel(delayed(_write_chunk)(cfg, c, root, gt) for c in chunks[:workers])   # warm-up
        start = time.perf_counter()
        cpu = sum(parallel(delayed(_timed_chunk)(cfg, c, root, gt) for c in chunks))
        return time.perf_counter() - start, cpu


def jpeg_only(images: int, size: int, quality: int, folder: Path) -> float:
    """Seconds to encode and write `images` JPEGs of random backgrounds (backgrounds precomputed)."""
    rng = np.random.default_rng(0)
    frames = [random_background(rng, size) for _ in range(8)]
    start = time.perf_counter()
    for k in range(images):
        ok, data = cv2.imencode(".jpg", frames[k % len(frames)], [cv2.IMWRITE_JPEG_QUALITY, quality])
        (folder / f"{k}.jpg").write_bytes(data.tobytes())
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    cfg = config(load_params())
    tmp = Path(tempfile.mkdtemp(prefix="bench_synth_"))
    try:
        seconds, cpu = bench_generator(cfg, tmp / "root", tmp / "gt", args.images, args.workers)
        (tmp / "jpeg").mkdir()
        cpu_start = time.process_time()
        ref = jpeg_only(args.images, cfg.image_size, cfg.jpeg_quality, tmp / "jpeg")
        ref_cpu = time.process_time() - cpu_start
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rate, ref_rate = args.images / seconds, args.images / ref
    print(f"synth generator: {rate:.1f} images/s wall-clock on {args.workers} workers")
    print(f"reference (JPEG encode + write only, 1 process): {ref_rate:.1f} images/s wall-clock")
    print(f"CPU time: {1000 * cpu / args.images:.0f} ms per image -> {args.workers * args.images / cpu:.1f} images/s "
          f"on {args.workers} uncontended cores; reference {1000 * ref_cpu / args.images:.1f} ms per image")
    print(f"per-image CPU cost ratio generator/reference: {cpu / ref_cpu:.1f}x")


if __name__ == "__main__":
    main()
