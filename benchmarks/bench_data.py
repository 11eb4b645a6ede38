"""Data-path throughput of stages crop and coarse_predict, against a bare JPEG decode measured in
the same process (issue 17).

The data: a tiny-mesh data root (tests/stages/tiny_data.py) of --unique 800x800 JPEGs, listed
--rows times over (N rows) and 4x that (4N rows): the extra rows are symbolic links to the same
image and info files (generating thousands of 800x800 images on this machine takes too long), so
the page cache holds only the unique files and the decode is the real one. All rows go to the
train split; val and test hold a few rows each.

Each stage runs in a child process (python -c, the stage's own `run`) that reports its wall time,
the CPU seconds of its main thread (time.thread_time: the serial work the main thread does:
dispatch, loops over rows, copies, store writes; the workers' decoding and warping run on other
threads and are not in it) and its peak resident memory (VmHWM of /proc/self/status). Printed per stage:
  images/s, and images/s against the bare decode at the same worker count
  main-thread CPU per image as a fraction of one image's decode (target <= 0.05)
  peak RSS on N and 4N rows and their ratio (target <= 1.25)
Reference: read_image (np.fromfile + cv2.imdecode + BGR->RGB) of every unique image on one
thread, best of 3, in this process; and the same on --workers threads.

coarse_predict uses a detector with random weights (the timing does not depend on them) of
the params' coarse_train sizes.

    python -m benchmarks.bench_data [--unique 250] [--rows 1000] [--workers 2] [--keep /tmp/bench_data]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.proc import run_child
from stages.common.params import Params, load_params
from stages.wcpa.layout import image_path, info_path, landmarks_path, read_image, write_list

CHILD = r"""
import json, sys, time
from benchmarks.proc import peak_kb
from stages.common.params import load_params
args = json.loads(sys.argv[1])
params = load_params("params.yaml").replace(**args["params"])
from pathlib import Path
if args["stage"] == "crop":
    from stages import crop as stage
    call = lambda: stage.run(params, Path(args["out"]), Path(args["coarse"]), Path(args["split"]))
else:
    from stages import coarse_predict as stage
    call = lambda: stage.run(params, Path(args["out"]), Path(args["model"]), Path(args["split"]))
    inner = stage.Detector.__call__
    def timed(self, *a, **k):
        start = time.thread_time()
        try:
            return inner(self, *a, **k)
        finally:
            network[0] += time.thread_time() - start
    stage.Detector.__call__ = timed
network = [0.0]
wall, cpu = time.perf_counter(), time.thread_time()
metrics = call()
wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
print(json.dumps({"wall": wall, "main_cpu": cpu - network[0], "network_cpu": network[0], "maxrss_kb": peak_kb()}))
"""


def make_root(folder: Path, unique: int) -> dict:
    """A data root of `unique` 800x800 train images and 4 test images -> its tables."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.stages.tiny_data import write_tiny_root
    return write_tiny_root(folder, n_train=unique, n_test=4, size=800)


def replicate(root: Path, table: pd.DataFrame, rows: int) -> pd.DataFrame:
    """A list of `rows` rows cycling over `table`'s samples. Each cycle past the first is a new
    set of subjects (subject id + "x<cycle>", the same actions and image ids) whose image, info
    and landmarks files link to the original's: the subjects keep their number of frames, as
    more data brings more subjects (pca's neutral scoring grows with a subject's frames
    squared, so N and 4N rows must not differ in that)."""
    out = []
    for k in range(rows):
        source = table.iloc[k % len(table)]
        cycle = k // len(table)
        if not cycle:
            out.append(source)
            continue
        row = source.copy()
        row["subject_id"] = f"{source.subject_id}x{cycle}"
        for path_of in (image_path, info_path, landmarks_path):
            link = path_of(root, row)
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(path_of(root, source).resolve())
        out.append(row)
    return pd.DataFrame(out).reset_index(drop=True)


def make_detector(path: Path, params: Params) -> None:
    """A model.pt of random weights with the params' coarse_train sizes."""
    from stages.coarse.detector import save_detector
    from stages.coarse.model import LandmarkNet
    from stages.face import ibug68
    cfg = params.coarse_train
    nets = {"locate": LandmarkNet(cfg.locate_backbone, 68, False, cfg.head_width),
            "refine": LandmarkNet(cfg.refine_backbone, 68, False, cfg.head_width)}
    save_detector(path, nets, {**cfg.as_dict(), "n_points": 68}, ibug68.MIRROR, {})


def coarse_landmarks(root: Path, tables: dict, folder: Path) -> None:
    """coarse_predict-like landmarks: the given 68 landmarks of each row, per split."""
    from stages.wcpa.layout import read_landmarks
    folder.mkdir(parents=True, exist_ok=True)
    for split, table in tables.items():
        np.save(folder / f"{split}.npy",
                np.stack([read_landmarks(landmarks_path(root, row), 68) for row in table.itertuples(index=False)]))


def decode_seconds(paths: list[Path], workers: int, repeats: int = 3) -> float:
    """Best-of wall seconds to read_image every path on `workers` threads (1: a plain loop)."""
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        if workers == 1:
            for path in paths:
                read_image(path)
        else:
            with ThreadPoolExecutor(workers) as pool:
                list(pool.map(read_image, paths))
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unique", type=int, default=250, help="distinct 800x800 images written")
    parser.add_argument("--rows", type=int, default=1000, help="N: train rows of the small run (4N: the large)")
    parser.add_argument("--workers", type=int, default=2, help="data.workers")
    parser.add_argument("--stages", default="crop,coarse_predict")
    parser.add_argument("--keep", default="", help="folder for the data (reused when present)")
    args = parser.parse_args()
    params = load_params("params.yaml")
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_data"))
    root = folder / "data"
    if not (root / "list").is_dir():
        make_root(root, args.unique)
    base = pd.read_csv(root / "list/WCPA_track2_train.csv", dtype=str).iloc[:args.unique]
    model = folder / "model.pt"
    if not model.is_file():
        make_detector(model, params)
    runs = {}
    for label, rows in (("N", args.rows), ("4N", 4 * args.rows)):
        train = replicate(root, base, rows)
        split = folder / f"split_{label}"
        write_list(split / "train.csv", train)
        write_list(split / "val.csv", base.iloc[:4])
        test = pd.read_csv(root / "list/WCPA_track2_test.csv", dtype=str)
        coarse = folder / f"coarse_{label}"
        coarse_landmarks(root, {"train": train, "val": base.iloc[:4], "test": test}, coarse)
        runs[label] = {"rows": rows + 8, "split": str(split), "coarse": str(coarse)}
    paths = [image_path(root, row) for row in base.itertuples(index=False)]
    decode_seconds(paths, 1, 1)          # page cache
    one = decode_seconds(paths, 1) / len(paths)
    many = decode_seconds(paths, args.workers) / len(paths)
    print(f"reference: read_image {one * 1e3:.2f} ms per image on 1 thread ({1 / one:.0f} images/s), "
          f"{1 / many:.0f} images/s on {args.workers} threads ({args.unique} unique 800x800 JPEGs)")
    overrides = {"data": {"root": str(root), "workers": args.workers, "skip_bad": False}}
    for stage in args.stages.split(","):
        figures = {}
        for label, info in runs.items():
            settings = {"params": overrides, "out": str(folder / f"out_{stage}_{label}"), "split": info["split"],
                        "coarse": info["coarse"], "model": str(model)}
            figures[label] = run_child(CHILD, stage, {"stage": stage, **settings})
            figures[label]["rows"] = info["rows"]
        for label, fig in figures.items():
            rate = fig["rows"] / fig["wall"]
            serial = fig["main_cpu"] / fig["rows"]
            print(f"{stage} {label} ({fig['rows']} rows, {args.workers} workers): {rate:.0f} images/s "
                  f"= {rate * many:.2f} of the {args.workers}-thread decode; main thread {serial * 1e3:.3f} ms CPU "
                  f"per image = {serial / one:.3f} of one decode (target <= 0.05); peak RSS "
                  f"{fig['maxrss_kb'] / 1024:.0f} MiB")
        print(f"{stage} peak RSS 4N / N: {figures['4N']['maxrss_kb'] / figures['N']['maxrss_kb']:.2f} (target <= 1.25)")
    print(f"data in {folder}")


if __name__ == "__main__":
    main()
