"""How much of the backbone's gradient the landmark term carries, under MSE and under eq. 1's GNLL
(docs/experiments.md, "GNLL against MSE").

On training batches of the crop store, for a network (the initial one, or a checkpoint's), the
gradient at the backbone's output features (B, F) of lambda.landmarks x the landmark term is compared
with the shape terms' (lambda.vdc VDC + lambda.wpdc WPDC): the ratio of their norms, per landmark
loss: mse, gnll (eq. 1), gnll with beta-NLL weights (beta 0.5, 1) and the part of the last that
flows through sigma alone (sigma reaches the backbone here: train.sigma_backbone true unless
--set says otherwise). Also printed: the mean
sigma (crop px), the RMS landmark error (crop px) and the means' gain (stages.nets.losses.mean_gain).

    python -m benchmarks.gnll_gradients [--checkpoint artifacts/train/checkpoints/epoch_001.pt]
        [--batches 8] [--set train.batch_size=16 ...]

Needs artifacts/crop, artifacts/pca and artifacts/split (dvc repro pca crop).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from stages.common.io import load_torch
from stages.common.params import apply_overrides, load_params
from stages.nets import losses
from stages.nets.trainer import Trainer, TrainPaths, loss_terms
from stages.wcpa.layout import load_resources

VARIANTS = {"mse": (None, False), "gnll": (0.0, False), "gnll beta 0.5": (0.5, False),
            "gnll beta 1": (1.0, False), "beta 1, sigma only": (1.0, True)}


def landmark_term(out: dict, uv: torch.Tensor, beta: float | None, sigma_only: bool) -> torch.Tensor:
    """The landmark term of a variant: MSE (beta None) or eq. 1 with beta-NLL weights; sigma_only:
    through sigma alone (the means held fixed)."""
    if beta is None:
        return losses.landmark_mse(out["mu"], uv)
    return losses.gnll(out["mu"].detach() if sigma_only else out["mu"], out["sigma"], uv, beta)


def batch_ratios(trainer: Trainer, batch: dict) -> dict[str, float]:
    """Per variant: |grad of lambda.landmarks x landmark term| / |grad of the shape terms| at the features."""
    captured = {}
    hook = trainer.model.landmarks.register_forward_hook(lambda _m, args, _o: captured.update(features=args[0]))
    out = trainer.model(batch["images"].float(), with_verts=False)
    hook.remove()
    lambdas = trainer.lambdas
    terms = loss_terms(out, batch, trainer.cfg, trainer.weights_mm)
    shape, = torch.autograd.grad(lambdas["vdc"] * terms["vdc"] + lambdas["wpdc"] * terms["wpdc"],
                                 captured["features"], retain_graph=True)
    ratios = {}
    for name, (beta, sigma_only) in VARIANTS.items():
        grad, = torch.autograd.grad(lambdas["landmarks"] * landmark_term(out, batch["uv"], beta, sigma_only),
                                    captured["features"], retain_graph=True)
        ratios[name] = float(grad.norm() / shape.norm())
    err = ((out["mu"].detach() - batch["uv"]) ** 2).sum(-1).mean().sqrt()
    return {**ratios, "sigma_px": float(out["sigma"].detach().mean()), "rms_error_px": float(err),
            "gain gnll": float(losses.mean_gain(out["sigma"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="a train checkpoint (epoch_NNN.pt); default: the initial network")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = apply_overrides(load_params(), ["train.landmark_loss=gnll", "train.sigma_backbone=true", *args.set])
    paths = TrainPaths(crop=Path("artifacts/crop"), pca=Path("artifacts/pca"), split=Path("artifacts/split"),
                       out=Path("artifacts/bench_gnll"))
    trainer = Trainer(params, paths, load_resources(params.data.root).camera)
    if args.checkpoint:
        trainer.model.load_state_dict(load_torch(args.checkpoint)["model"])
    trainer.model.train()          # batch statistics, as in a training step (running stats are not saved)
    rows = []
    for i, batch in zip(range(args.batches), trainer.loader):
        rows.append(batch_ratios(trainer, batch))
    for key in rows[0]:
        print(f"{key:>16}: {sum(r[key] for r in rows) / len(rows):.4g}")


if __name__ == "__main__":
    main()
