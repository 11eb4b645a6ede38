"""A small project for the GPU benchmarks (benchmarks/gpu_check.sh), built in about a minute:

    python -m benchmarks.gpu_project FOLDER [--rows 4096] [--profile gpu]

FOLDER/data: 32 synthetic training subjects and 2 test subjects (9 images each); FOLDER/project:
params.yaml (the profile, pointing at that data, pretrained weights off) and artifacts/ split
(--rows train rows cycling over the distinct training images, each cycle new subjects: bench_data's
replicate), coarse_predict (the given 68 landmarks), crop, pca, train (one epoch, not compiled) and
coarse_train/model.pt (a detector of the profile's backbones with random weights: the
coarse_predict stage's speed, not its accuracy). The benchmarks then run in FOLDER/project.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import yaml

from benchmarks.bench_data import coarse_landmarks
from benchmarks.bench_scale import base_and_val, bench_params, make_project, make_root
from stages.common.params import Params
from stages.wcpa.layout import list_path, load_resources, read_list


def random_detector(params: Params, root: Path, path: Path) -> None:
    """A coarse detector of params' backbones with random weights, saved as coarse_train does."""
    from stages.coarse.detector import save_detector
    from stages.coarse.model import LandmarkNet
    from stages.coarse.targets import landmark_flip_order
    cfg = params.coarse_train
    config = {"locate_backbone": cfg.locate_backbone, "refine_backbone": cfg.refine_backbone,
              "locate_size": cfg.locate_size, "refine_size": cfg.refine_size, "refine_margin": cfg.refine_margin,
              "head_width": cfg.head_width, "n_points": 68}
    nets = {name: LandmarkNet(config[f"{name}_backbone"], 68, False, config["head_width"])
            for name in ("locate", "refine")}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_detector(path, nets, config, landmark_flip_order(load_resources(root)), {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--profile", default="gpu")
    args = parser.parse_args()
    started = time.perf_counter()
    root, project = args.folder.resolve() / "data", args.folder.resolve() / "project"
    if not (root / "list").is_dir():
        make_root(root, 32, os.cpu_count() or 1)
    base, val = base_and_val(root)
    make_project(project, root, base, val, args.rows)      # the last 3 training subjects are val
    params = bench_params(args.profile, root, base).replace(train={"compile": False})
    (project / "params.yaml").write_text(yaml.safe_dump(params.as_dict(), sort_keys=False))
    os.chdir(project)
    tables = {split: read_list(Path(f"artifacts/split/{split}.csv")) for split in ("train", "val")}
    coarse_landmarks(root, {**tables, "test": read_list(list_path(root, "test"))}, Path("artifacts/coarse_predict"))
    from stages import crop, pca, train
    for name, stage in (("crop", crop), ("pca", pca), ("train", train)):
        started_stage = time.perf_counter()
        stage.run(params)
        print(f"{name}: {time.perf_counter() - started_stage:.1f} s", flush=True)
    random_detector(params, root, Path("artifacts/coarse_train/model.pt"))
    print(f"project in {project} ({time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
