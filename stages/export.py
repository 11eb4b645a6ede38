"""Export: the two-branch network as ONNX, for use outside this code base.

`python -m stages.export [--checkpoint finetune|train] [--out artifacts/export/model.onnx]` reads
artifacts/<checkpoint>/model.pt (default infer.checkpoint), checked as predict checks it
(stages.nets.checkpoint.load_network_for_images: params train.*, crop.size, the data's vertex
count, the PCA basis),
and writes it with torch.onnx's TorchScript exporter (dynamo=False: the default dynamo exporter
of torch 2.14 needs onnxscript, not a dependency here), opset 18, a dynamic batch axis.

Input  "crops"  float32 (B, 3, S, S): the crop stage's crop (S = crop.size), RGB, NCHW, values
                0..255 (uint8 cast to float, not scaled). Everything else is inside the graph:
                the resize to train.input_size (torch's antialiased bilinear, as a fixed linear
                map: two matrix products), the ImageNet mean / std normalisation, the CoordConv
                X and Y channels. No flip & merge: run the mirrored crop through it for that.
Outputs "mu"    float32 (B, V, 2): every vertex's position on the crop, crop px (continuous:
                the image spans [0, S]; map to the full image through the crop's inverse warp)
        "sigma" float32 (B, V): its uncertainty, crop px
        "verts" float32 (B, V, 3): the canonical mesh, metres (head frame; the pose comes from
                PnP between verts and mu, as in stages.nets.inference)
"""
from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch
from torch import nn

from stages.common.io import atomic_write
from stages.common.params import Params, ParamsError
from stages.common.stage import stage_main
from stages.nets.checkpoint import CheckpointError, load_network_for_images
from stages.nets.model import FaceNet, InputResize
from stages.wcpa.layout import DataError, load_resources

log = logging.getLogger("export")
ARTIFACTS = Path("artifacts")
INPUTS, OUTPUTS = ("crops",), ("mu", "sigma", "verts")
OPSET = 18


class ExportError(ValueError):
    """A network that the exported graph cannot hold; the message names the key."""


class MatrixResize(nn.Module):
    """InputResize of S-px crops as the linear map it is: x -> A x A^T with A (size, S), taken
    from InputResize itself (rows of the identity resized): exportable, unlike antialias."""

    def __init__(self, resize: InputResize, crop_size: int):
        super().__init__()
        basis = torch.eye(crop_size).view(crop_size, 1, 1, crop_size)
        with torch.no_grad():
            columns = InputResize(resize.size)(basis.expand(-1, 1, crop_size, -1))[:, 0, 0, :]
        self.register_buffer("matrix", columns.T.contiguous())      # (size, S)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.matrix @ x @ self.matrix.T


class Exported(nn.Module):
    """A copy of FaceNet with a graph-friendly resize, returning (mu, sigma, verts)."""

    def __init__(self, model: FaceNet):
        super().__init__()
        self.model = model = copy.deepcopy(model)
        size = model.config.input_size
        if size and size != model.config.crop_size:
            model.resize = MatrixResize(model.resize, model.config.crop_size)

    def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model(crops)
        return out["mu"], out["sigma"], out["verts"]


def export_onnx(model: FaceNet, path: Path | str) -> None:
    """Write `model` (CPU, eval) to `path` as ONNX, atomically."""
    size = model.config.crop_size
    example = torch.rand(2, 3, size, size) * 255
    axes = {name: {0: "batch"} for name in INPUTS + OUTPUTS}
    with atomic_write(path) as tmp:
        torch.onnx.export(Exported(model.eval()), (example,), str(tmp), input_names=list(INPUTS),
                          output_names=list(OUTPUTS), dynamic_axes=axes, opset_version=OPSET, dynamo=False)


def run(params: Params, checkpoint: str | None = None, out: Path | str = ARTIFACTS / "export" / "model.onnx",
        artifacts: Path = ARTIFACTS) -> Path:
    """Export artifacts/<checkpoint or infer.checkpoint>/model.pt to `out`."""
    resources = load_resources(params.data.root)
    model = load_network_for_images(Path(artifacts) / (checkpoint or params.infer.checkpoint) / "model.pt",
                                    Path(artifacts) / "pca" / "basis.npz", params.train, params.crop.size,
                                    resources.n_verts)
    if model.pose is not None:
        raise ExportError("train.pose_head=direct6dof: export writes mu, sigma and verts only; the direct head's "
                         "pose needs each crop's warp (stages.nets.pose_frame) and is not exported")
    if model.config.coordconv and model.config.coord_maps == "image":
        raise ExportError("train.coord_maps=image: the network reads each crop's full-image positions, which the "
                         "exported model (crops in, mu, sigma and verts out) has no input for")
    export_onnx(model, out)
    log.info("wrote %s", out)
    return Path(out)


def options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", choices=("finetune", "train"), help="default: infer.checkpoint")
    parser.add_argument("--out", default=str(ARTIFACTS / "export" / "model.onnx"))


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, options, argv, errors=(ExportError, CheckpointError, DataError, ParamsError))


if __name__ == "__main__":
    main()
