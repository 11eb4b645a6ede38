"""Run a training stage on params `gpus` GPUs: `python -m stages.launch <stage> [its options]`.

gpus 1: the stage runs in this process, as `python -m stages.<stage>` would. gpus N > 1: this
process becomes `torchrun --standalone --nproc_per_node N -m stages.<stage> [options]` (one
process per GPU, nccl, DDP: stages.common.distributed), after checking that N CUDA devices are
visible. dvc.yaml runs coarse_train, train and finetune through it, so `dvc repro` (and
`dvc exp run -S gpus=4`) uses as many GPUs as `gpus` says; the stages' outputs do not depend on
how they were launched beyond the params, so this module is no dep of theirs.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from stages.common.params import PARAMS_FILE, load_params

STAGES = ("coarse_train", "train", "finetune")      # the stages that run under torchrun (DDP)


def torchrun_argv(stage: str, options: list[str], gpus: int) -> list[str]:
    """The command line of `torchrun` (through this Python) running stages.<stage> on `gpus` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
            "-m", f"stages.{stage}", *options]


def check_gpus(gpus: int) -> None:
    """Stop unless `gpus` CUDA devices are visible."""
    import torch
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < gpus:
        raise SystemExit(f"params gpus={gpus}, but {visible} CUDA device(s) are visible: set gpus to at most "
                         f"{max(visible, 1)} (e.g. dvc exp run -S gpus={max(visible, 1)})")


def params_file(options: list[str]) -> str:
    """The --params FILE among a stage's options (default params.yaml)."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default=str(PARAMS_FILE))
    return parser.parse_known_args(options)[0].params


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=STAGES)
    parser.add_argument("options", nargs=argparse.REMAINDER, help="the stage's own options, e.g. --params FILE")
    args = parser.parse_args(argv)
    gpus = load_params(params_file(args.options)).gpus
    if gpus == 1:
        importlib.import_module(f"stages.{args.stage}").main(args.options)
        return
    check_gpus(gpus)
    command = torchrun_argv(args.stage, args.options, gpus)
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
