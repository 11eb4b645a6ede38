"""How the pipeline's stages grow with the number of images, and the hours the paper profile
would take on the real data on this machine (issue 17).

The data: a synthetic data root (stage synth's generator) of --subjects training subjects
(9 images each: 3 actions x 3 frames, 800x800 JPEGs) and 2 test subjects; the last 3 training
subjects are the val split. The train list holds N = --rows rows and then 4N, cycling over the
distinct training images: each cycle past the first is a new set of subjects of 9 images whose
image, info and landmarks files are symbolic links to the originals' (benchmarks/bench_data.py
replicate). The decode is the real one, the page cache holds only the distinct files, and pca's
neutral scoring (per subject, quadratic in its frames up to pca.max_frames_per_subject) grows
with N as it does when more data brings more subjects.

The stages run in the pipeline's order, each on N and then 4N (so that both see the same load of a
shared machine), each in its own child process (its own peak memory: VmHWM, and its worker processes' largest,
benchmarks/proc.py) in
a project folder of its own: coarse_train (one epoch), coarse_predict (on the one-epoch detector),
crop (on the given 68 landmarks, so that the crops do not depend on the detector's quality), pca,
baseline (the N train rows' labels), train (one epoch), finetune (one epoch from that train
model), infer (the N training crops as the val split, checkpoint train), evaluate (infer's
predictions: the N rows as val, scored, and as test, drawn only) and submit (the N rows as the
test list). Printed per stage: images/s and peak RSS at N and 4N, their ratios
4N/N, the seconds per image at the margin ((t(4N) - t(N)) / (images(4N) - images(N)): the start-up
and the fixed-size val passes cancel), and that times the real data's images times the paper
profile's epochs (stages/profiles/paper.yaml): the hours on 447,185 images (356,640 train) on this
machine.

By default the stages run at the demo's sizes (params.yaml), so the hours are the paper's image
counts and epochs at the demo's networks and sizes; --profile paper runs the paper's networks
and sizes (ResNet50 at 256 px, crops of 256, the coarse detector's resnet18/resnet50 at 256 px;
pretrained weights off: no download), slow on a CPU: use a small --rows there.

    python -m benchmarks.bench_scale [--rows 1000] [--subjects 32] [--profile paper] [--keep /tmp/bench_scale]
"""
from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import pandas as pd

from benchmarks.bench_data import coarse_landmarks, replicate
from benchmarks.proc import REPO, run_child
from stages.common.params import Params, load_params
from stages.face.pca import ARKIT_BLENDSHAPES
from stages.profile import profile_params
from stages.wcpa.layout import list_path, read_list, write_list

REAL_IMAGES = 447_185
REAL_TRAIN = 356_640
REAL_TEST = REAL_IMAGES - REAL_TRAIN
STAGES = ("coarse_train", "coarse_predict", "crop", "pca", "baseline", "train", "finetune", "infer", "evaluate",
          "submit")
PREDICTOR_STAGES = ("infer", "evaluate", "submit")    # run in the project whose val split is the N train rows

CHILD = r"""
import json, sys, time
from benchmarks.proc import peak_kb, workers_peak_kb
args = json.loads(sys.argv[1])
from stages.common.params import check_params
params, stage = check_params(args["params"], "bench_scale"), args["stage"]
import importlib
module = importlib.import_module(f"stages.{stage}")
start = time.perf_counter()
module.run(params, *args["args"])
wall = time.perf_counter() - start
print(json.dumps({"wall": wall, "maxrss_kb": peak_kb(), "workers_maxrss_kb": workers_peak_kb()}))
"""


def extrapolate_hours(seconds_per_image: float, images: int, epochs: int = 1) -> float:
    """Hours for `epochs` passes over `images` images at `seconds_per_image`."""
    return seconds_per_image * images * epochs / 3600.0


def marginal_seconds(wall: tuple[float, float], images: tuple[int, int]) -> float:
    """Seconds per image between two runs (t(4N) - t(N)) / (n(4N) - n(N)): what each further image
    costs, without the fixed start-up; the large run's mean when the difference is not positive
    (a noisy machine)."""
    extra = (wall[1] - wall[0]) / (images[1] - images[0])
    return extra if extra > 0 else wall[1] / images[1]


def real_work(paper: Params) -> dict[str, tuple[int, int, str]]:
    """Per stage: (images per pass, passes, what they are) on the real data, with the paper
    profile's epochs (the val split: split.val_fraction of the training list). The training
    stages count the whole list an epoch: its train split and its val pass, at the training
    rate (an upper bound: validation is the forward alone); evaluate and submit run once for
    each of submit.predictors."""
    val = round(REAL_TRAIN * paper.split.val_fraction)
    listed, predictors = "train list (train split + val pass)", len(paper.submit.predictors)
    return {"coarse_train": (REAL_TRAIN, paper.coarse_train.epochs, f"{listed} x coarse_train.epochs"),
            "coarse_predict": (REAL_IMAGES, 1, "all images"),
            "crop": (REAL_IMAGES, 1, "all images"),
            "pca": (REAL_TRAIN, 1, "train + val labels"),
            "baseline": (REAL_TRAIN - val, 1, "train labels"),
            "train": (REAL_TRAIN, paper.train.epochs, f"{listed} x train.epochs"),
            "finetune": (REAL_TRAIN, paper.finetune.epochs, f"{listed} x finetune.epochs"),
            "infer": (val + REAL_TEST, 1, "val + test images"),
            "evaluate": (val + REAL_TEST, predictors, f"val + test predictions x {predictors} predictors"),
            "submit": (REAL_TEST, predictors, f"test predictions x {predictors} predictors")}


def base_and_val(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The data root's training list split by subject: the rows the train list cycles over (base)
    and the last 3 subjects' rows (val)."""
    listed = read_list(list_path(root, "train"))
    is_val = listed.subject_id.isin(sorted(listed.subject_id.unique())[-3:])
    return listed[~is_val].reset_index(drop=True), listed[is_val].reset_index(drop=True)


def bench_params(profile: str | None, root: Path, base: pd.DataFrame) -> Params:
    """params.yaml (or with --profile merged in) for the benchmark: one epoch, no downloads, the
    benchmark's data root, infer from the train checkpoint, at most as many PCA components as
    base's subjects and the blendshapes span (the replicated subjects' neutral meshes repeat
    the originals'), the neutral list found from the project folders the stages run in."""
    params = profile_params(profile) if profile else load_params("params.yaml")
    distinct_meshes = base.subject_id.nunique() + len(ARKIT_BLENDSHAPES)
    return params.replace(data={"root": str(root), "blendshapes": str(root / "blendshapes"), "skip_bad": False},
                          coarse_train={"epochs": 1, "pretrained": False}, train={"epochs": 1, "pretrained": False},
                          finetune={"epochs": 1},
                          infer={"checkpoint": "train"},
                          pca={"n_components": min(params.pca.n_components, distinct_meshes - 1),
                               "neutral_list": str(REPO / params.pca.neutral_list)})


def make_root(root: Path, subjects: int, workers: int) -> None:
    """A synthetic data root of `subjects` training and 2 test subjects (9 images each)."""
    from stages.synth import config
    from stages.synthetic.synth_data import generate
    params = load_params("params.yaml").replace(
        synth={"train_subjects": subjects, "test_subjects": 2, "actions_per_subject": 3, "frames_per_action": 3})
    generate(config(params), root, root.parent / "test_gt", workers)


def make_project(folder: Path, root: Path, base: pd.DataFrame, val: pd.DataFrame, rows: int) -> dict[str, int]:
    """folder/artifacts/split of `rows` train rows cycling over `base`; images each stage reads."""
    train = replicate(root, base, rows)
    write_list(folder / "artifacts/split/train.csv", train)
    write_list(folder / "artifacts/split/val.csv", val)
    test = len(read_list(list_path(root, "test")))
    return {"coarse_train": rows, "coarse_predict": rows + len(val) + test, "crop": rows + len(val) + test,
            "pca": rows + len(val), "baseline": rows, "train": rows, "finetune": rows, "infer": rows,
            "evaluate": 2 * rows, "submit": rows}


def infer_project(folder: Path, project: Path) -> None:
    """folder/artifacts whose val split is `project`'s train split: infer on its N crops."""
    art = folder / "artifacts"
    (art / "split").mkdir(parents=True, exist_ok=True)
    (art / "crop").mkdir(exist_ok=True)
    (art / "split/val.csv").write_bytes((project / "artifacts/split/train.csv").read_bytes())
    for link, target in ((art / "crop/val", project / "artifacts/crop/train"), (art / "pca", project / "artifacts/pca"),
                         (art / "train", project / "artifacts/train")):
        if not link.exists():
            link.symlink_to(target.resolve())


def predictions_view(folder: Path, root: Path) -> Path:
    """folder/data: `root` (its folders linked) whose test list is folder's val split (the N train
    rows), with infer's val predictions as its test predictions: evaluate scores N val rows and
    draws N test rows, submit packs N rows. Returns the view's root."""
    view = folder / "data"
    if not view.exists():
        view.mkdir()
        for entry in root.iterdir():
            if entry.name != "list":
                (view / entry.name).symlink_to(entry.resolve())
        (view / "list").mkdir()
        write_list(list_path(view, "train"), read_list(list_path(root, "train")))
    write_list(list_path(view, "test"), read_list(folder / "artifacts/split/val.csv"))
    test = folder / "artifacts/infer/predictions_test.npz"
    test.unlink(missing_ok=True)
    test.symlink_to("predictions_val.npz")
    return view


def run_stage(stage: str, params: Params, project: Path, root: Path) -> dict:
    if stage == "crop":        # the given landmarks in place of the one-epoch detector's
        tables = {"train": read_list(project / "artifacts/split/train.csv"),
                  "val": read_list(project / "artifacts/split/val.csv"), "test": read_list(list_path(root, "test"))}
        coarse_landmarks(root, tables, project / "artifacts/coarse_predict")
    cwd, args = project, []
    if stage in PREDICTOR_STAGES:
        cwd = project.with_name(project.name + "_infer")
        args = ["val"] if stage == "infer" else ["infer"]
    if stage == "infer":
        infer_project(cwd, project)
    elif stage in PREDICTOR_STAGES:
        no_labels = str(REPO / "data/no_test_gt")                # evaluate: test drawn, not scored
        params = params.replace(data={"root": str(predictions_view(cwd, root)), "test_gt": no_labels})
    return run_child(CHILD, stage, {"stage": stage, "params": params.as_dict(), "args": args}, cwd=cwd)


def table(results: dict, counts: dict, paper: Params) -> list[str]:
    """The printed table's lines."""
    work = real_work(paper)
    lines = ["| stage | images/s (N, 4N) | peak MiB (N, 4N) | workers' peak MiB (N, 4N) | 4N/N time, peak "
             "| s/image (margin) | real images x passes | hours on 447k (paper epochs) |",
             "|---|---|---|---|---|---|---|---|"]
    total = 0.0
    for stage, (small, large) in results.items():
        images = (counts["N"][stage], counts["4N"][stage])
        per_image = marginal_seconds((small["wall"], large["wall"]), images)
        count, passes, what = work[stage]
        hours = extrapolate_hours(per_image, count, passes)
        total += hours
        peak = (small["maxrss_kb"] / 1024, large["maxrss_kb"] / 1024)
        workers = (small["workers_maxrss_kb"] / 1024, large["workers_maxrss_kb"] / 1024)
        lines.append(f"| {stage} | {images[0] / small['wall']:.1f}, {images[1] / large['wall']:.1f} "
                     f"| {peak[0]:.0f}, {peak[1]:.0f} | {workers[0]:.0f}, {workers[1]:.0f} "
                     f"| {large['wall'] / small['wall']:.2f}, {peak[1] / peak[0]:.2f} "
                     f"| {per_image * 1e3:.1f} ms | {count:,} x {passes} ({what}) | {hours:.1f} |")
    lines.append(f"| total | | | | | | | {total:.1f} ({total / 24:.1f} days) |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="N: train rows of the small run (4N: the large)")
    parser.add_argument("--subjects", type=int, default=32, help="synthetic training subjects (9 images each)")
    parser.add_argument("--profile", help="merge stages/profiles/<name>.yaml over params.yaml, e.g. paper")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--keep", default="", help="folder for the data (the data root is reused when present)")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="bench_scale")).resolve()
    root = folder / "data"
    if not (root / "list").is_dir():
        make_root(root, args.subjects, 2)
    base, val = base_and_val(root)
    params = bench_params(args.profile, root, base)
    paper = profile_params("paper")
    stages = [s for s in STAGES if s in args.stages.split(",")]
    print(f"profile {args.profile or 'demo (params.yaml)'}; N = {args.rows} and 4N = {4 * args.rows} train rows "
          f"cycling over {min(args.rows, len(base))} (N) and {min(4 * args.rows, len(base))} (4N) distinct 800x800 synthetic images (val {len(val)}, test "
          f"{len(read_list(list_path(root, 'test')))} distinct); {os.cpu_count()} CPUs; each stage a child process")
    sizes = {"N": args.rows, "4N": 4 * args.rows}
    counts = {label: make_project(folder / f"project_{label}", root, base, val, rows) for label, rows in sizes.items()}
    results = {s: [] for s in stages}
    for stage in stages:        # N and 4N one after the other: both see the same machine load
        for label in sizes:
            fig = run_stage(stage, params, folder / f"project_{label}", root)
            results[stage].append(fig)
            print(f"{stage} {label}: {counts[label][stage]} images in {fig['wall']:.1f} s "
                  f"({counts[label][stage] / fig['wall']:.1f} images/s), peak RSS {fig['maxrss_kb'] / 1024:.0f} MiB, "
                  f"its workers' {fig['workers_maxrss_kb'] / 1024:.0f} MiB",
                  flush=True)
    print("\n".join(table(results, counts, paper)))
    print(f"hours: marginal seconds per image at these sizes x the real counts x the paper's epochs "
          f"(coarse_train {paper.coarse_train.epochs}, train {paper.train.epochs}, finetune {paper.finetune.epochs}); "
          f"each epoch's val pass counted with its training images at the training rate (an upper bound)")
    print(f"data in {folder}")


if __name__ == "__main__":
    main()
