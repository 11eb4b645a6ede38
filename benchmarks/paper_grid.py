"""The paper's Tables 1-3 as named DVC experiments: one command queues every row.

    python -m benchmarks.paper_grid [--profile demo|paper] [--dry-run]
    dvc queue start -j 1          # printed at the end; then: python -m benchmarks.paper_tables

Each row is `dvc exp run --queue -n NAME -S key=value ... [targets]` on top of the workspace's
params.yaml (with --profile other than demo, every key of stages/profiles/<profile>.yaml is set
too, so that the workspace's params.yaml need not change). Rows scored before finetuning set
infer.checkpoint=train and target evaluate@infer and submit@infer only, so that their experiment
skips the finetune stage (the direct 6DoF head has none). The stages that no row changes (synth,
split, coarse_*, crop, pca) come from DVC's run cache. --dry-run prints the commands.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess

from ruamel.yaml import YAML

from stages.profile import profile_file

PRE_FINETUNE = ("infer.checkpoint=train",)
PRE_FINETUNE_TARGETS = ("evaluate@infer", "submit@infer")
DIRECT_CAMERA = ("train.pose_head=direct6dof", "train.pose_frame=camera", "train.shape_head=pca")   # the paper's
GNLL_PNP = ("train.pose_head=pnp", "train.landmark_loss=gnll", "train.coordconv=true", "train.shape_head=pca")

# name -> (-S assignments, targets); the names are those of benchmarks/paper_tables.yaml
GRID: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "t1-direct6dof": ((*DIRECT_CAMERA, "train.coordconv=false") + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t1-direct6dof-cc": ((*DIRECT_CAMERA, "train.coordconv=true", "train.coord_maps=image") + PRE_FINETUNE,
                         PRE_FINETUNE_TARGETS),
    "t1-direct6dof-crop": (("train.pose_head=direct6dof", "train.pose_frame=crop", "train.coordconv=false",
                            "train.shape_head=pca") + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t1-mse-pnp": (("train.pose_head=pnp", "train.landmark_loss=mse", "train.coordconv=false", "train.shape_head=pca")
                   + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t1-mse-pnp-cc": (("train.pose_head=pnp", "train.landmark_loss=mse", "train.coordconv=true",
                       "train.shape_head=pca") + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t1-gnll-pnp": (GNLL_PNP + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t2-direct3d": (GNLL_PNP[:-1] + ("train.shape_head=direct",) + PRE_FINETUNE, PRE_FINETUNE_TARGETS),
    "t3-epro": (GNLL_PNP + ("infer.checkpoint=finetune",), ()),
    "t3-control": (GNLL_PNP + ("infer.checkpoint=finetune", "lambda.pnp=0", "lambda.mc=0"), ()),
}


def flatten(tree: dict, prefix: str = "") -> list[str]:
    """A nested profile mapping -> ['section.key=value', ...] with each value in YAML flow style."""
    out = []
    for key, value in tree.items():
        if isinstance(value, dict):
            out += flatten(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={value_text(value)}")
    return out


def value_text(value) -> str:
    """A scalar or list as `dvc exp run -S` reads it (YAML): [a, b], true, 1e-4."""
    if isinstance(value, list):
        return "[" + ", ".join(value_text(v) for v in value) + "]"
    return str(value).lower() if isinstance(value, bool) else str(value)


def profile_assignments(profile: str) -> list[str]:
    """The -S assignments of a profile's keys ([] for the demo, the params.yaml defaults)."""
    return [] if profile == "demo" else flatten(YAML(typ="safe").load(profile_file(profile).read_text()) or {})


def commands(profile: str) -> list[list[str]]:
    """One `dvc exp run --queue` command line per row; the row's assignments come after the profile's."""
    base = profile_assignments(profile)
    out = []
    for name, (assignments, targets) in GRID.items():
        sets = [arg for item in base + list(assignments) for arg in ("-S", item)]
        out.append(["dvc", "exp", "run", "--queue", "-n", f"{name}" if profile == "demo" else f"{name}-{profile}",
                    *sets, *targets])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo", help="demo (params.yaml as it is) or a stages/profiles name")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, queue nothing")
    args = parser.parse_args()
    for command in commands(args.profile):
        print(shlex.join(command))
        if not args.dry_run:
            subprocess.run(command, check=True)
    print("then: dvc queue start -j 1 && dvc queue status; python -m benchmarks.paper_tables"
          + ("" if args.profile == "demo" else f" --suffix -{args.profile}"))


if __name__ == "__main__":
    main()
