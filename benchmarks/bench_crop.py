"""Crop throughput and crop-store read speed, as ratios against references run in the same process.

1. crop / decode: the crop stage's work loop (decode + warp + memmap write, stages.crop.crop_split)
   over N val images, against a bare JPEG-decode loop over the same files, both with
   data.workers joblib threads. Target: at most 1.5.
2. JPEG / store: reading a random batch of crops from artifacts/crop/val/images.npy (memmap)
   against decoding the same crops saved as JPEG files (quality 95). Target: at least 5.

Run after `dvc repro crop`:  python -m benchmarks.bench_crop [--images 450] [--batch 64]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from joblib import Parallel, delayed

from stages import crop
from stages.common.badinput import BadInputs
from stages.common.cropstore import CropStoreWriter
from stages.common.params import Params, load_params
from stages.wcpa.layout import image_path, read_image, read_list


def best_of(repeats: int, work) -> float:
    """Smallest wall time of `repeats` runs of work()."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def crop_vs_decode(params: Params, count: int) -> tuple[float, float]:
    """(crop loop seconds, bare decode seconds) over the first `count` val images."""
    root, workers = Path(params.data.root), params.data.workers
    size, chunk = params.crop.size, params.crop.chunk
    table = read_list(Path("artifacts/split/val.csv")).iloc[:count].reset_index(drop=True)
    warps = np.load("artifacts/crop/val/warps.npy")[:count]
    paths = [image_path(root, row) for row in table.itertuples(index=False)]
    shape = read_image(paths[0]).shape[1::-1]   # (width, height)

    def decode() -> None:
        Parallel(n_jobs=workers, prefer="threads")(delayed(read_image)(p) for p in paths)

    def crop_all() -> None:
        with tempfile.TemporaryDirectory() as work:
            writer = CropStoreWriter(Path(work) / "val", table, warps, size)
            crop.crop_split(writer, root, table, np.arange(len(table)), size, shape, chunk, workers,
                            BadInputs(skip=False, max_fraction=0.0), "bench crop")

    decode()   # warm the page cache
    return best_of(2, crop_all), best_of(2, decode)


def jpeg_vs_store(batch: int, seed: int) -> tuple[float, float]:
    """(JPEG decode seconds, store read seconds) for one random batch of val crops."""
    store = Path("artifacts/crop/val/images.npy")
    images = np.load(store, mmap_mode="r")
    rows = np.sort(np.random.default_rng(seed).choice(len(images), size=min(batch, len(images)), replace=False))
    with tempfile.TemporaryDirectory() as folder:
        files = []
        for row in rows:
            files.append(Path(folder) / f"{row}.jpg")
            cv2.imwrite(str(files[-1]), cv2.cvtColor(np.asarray(images[row]), cv2.COLOR_RGB2BGR),
                        [cv2.IMWRITE_JPEG_QUALITY, 95])

        def from_jpeg() -> np.ndarray:
            return np.stack([read_image(f) for f in files])

        def from_store() -> np.ndarray:
            return np.asarray(np.load(store, mmap_mode="r")[rows])

        from_jpeg(), from_store()
        return best_of(5, from_jpeg), best_of(5, from_store)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--images", type=int, default=450, help="val images in the crop-vs-decode loop")
    parser.add_argument("--batch", type=int, default=64, help="crops in the store-vs-JPEG batch")
    args = parser.parse_args()
    params = load_params(args.params)
    crop_s, decode_s = crop_vs_decode(params, args.images)
    print(f"crop loop {crop_s:.3f} s vs bare decode {decode_s:.3f} s over {args.images} images, "
          f"{params.data.workers} workers: ratio {crop_s / decode_s:.2f} (target <= 1.5)")
    jpeg_s, store_s = jpeg_vs_store(args.batch, params.seed)
    print(f"batch of {args.batch} crops: JPEG decode {jpeg_s * 1e3:.2f} ms vs store read {store_s * 1e3:.2f} ms: "
          f"ratio {jpeg_s / store_s:.1f} (target >= 5)")


if __name__ == "__main__":
    main()
