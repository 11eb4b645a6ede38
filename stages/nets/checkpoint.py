"""Loading a trained network (artifacts/{train,finetune}/model.pt) for inference, with checks.

model.pt holds {"config": NetConfig as a dict, "model": state_dict (PCA basis buffers included),
"params": the training params, "basis_shape": [C, V, 3], "inputs": the identity of what it was
trained on (stages.nets.trainer.training_inputs: "crop_run", "pca/basis.npz", ...)}. It is read as
tensors and plain data only. A checkpoint that does not fit the params or the data (another
backbone depth, CoordConv setting or maps, shape head, pose head or frame, input size, vertex count, crop size or PCA size),
or that was trained on crops of another crop run or on another PCA basis, stops with a message
that names the file and every mismatch.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

from stages.common.identity import path_digest
from stages.common.io import UnsafeCheckpointError, load_torch
from stages.common.params import TrainParams
from stages.face.pca import PCABasis
from stages.nets.model import FaceNet, NetConfig

REQUIRED_KEYS = ("config", "model", "inputs")


class CheckpointError(ValueError):
    """A model.pt that is missing, unreadable or does not match the params / data."""


@dataclass(frozen=True)
class Expected:
    """What the network must be: from params (train.*) and from the data (crop store, PCA)."""

    depth: int          # train.depth
    coordconv: bool     # train.coordconv
    shape_head: str     # train.shape_head
    crop_size: int      # side of the crop store's images, px
    n_verts: int        # vertices of the data's template mesh
    n_components: int   # components of artifacts/pca/basis.npz
    input_size: int     # train.input_size (0: the crop size)
    pose_head: str = "pnp"  # train.pose_head
    pose_frame: str = "crop"    # train.pose_frame (compared for a direct pose head only)
    coord_maps: str = "crop"    # train.coord_maps (compared with CoordConv only)

    @classmethod
    def of(cls, train: TrainParams, crop_size: int, n_verts: int, n_components: int) -> "Expected":
        """From the train params section (depth, coordconv, coord_maps, shape_head, input_size,
        pose_head, pose_frame) and the data."""
        return cls(depth=train.depth, coordconv=train.coordconv, shape_head=train.shape_head,
                   crop_size=crop_size, n_verts=n_verts, n_components=n_components,
                   input_size=train.input_size, pose_head=train.pose_head, pose_frame=train.pose_frame,
                   coord_maps=train.coord_maps)


def read_checkpoint(path: Path) -> dict:
    """The saved dict; a missing or malformed file is a CheckpointError naming it."""
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found (run `dvc repro {path.parent.name}`, "
                              "or set infer.checkpoint to a stage that has one)")
    try:
        saved = load_torch(path)
    except UnsafeCheckpointError as err:
        raise CheckpointError(str(err)) from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise CheckpointError(f"{path}: not a model checkpoint (missing {', '.join(missing)}; "
                              "a model of older code: re-run its stage)")
    return saved


def used_inputs(crop_run: str, basis: Path) -> dict[str, str]:
    """The identities a network is checked against where it is used: the crop run of the store
    it predicts on (CropStore.run) and the PCA basis file (names as in training_inputs)."""
    return {"crop_run": crop_run, "pca/basis.npz": path_digest(basis)}


def check_inputs(path: Path, saved: dict, current: dict[str, str]) -> None:
    """Stop unless the checkpoint was trained on the inputs whose identities are `current`
    ({name: digest}, e.g. {"crop_run": CropStore.run, "pca/basis.npz": digest})."""
    recorded = saved["inputs"]
    differ = [name for name, value in current.items() if recorded.get(name) != value]
    if differ:
        raise CheckpointError(f"{path}: trained on other inputs than these ({', '.join(differ)} differ): "
                              "re-run `dvc repro` (train, finetune) on the current crops and basis")


def config_of(path: Path, saved: dict) -> NetConfig:
    """The NetConfig saved in a checkpoint (fields added later take their defaults)."""
    config = saved["config"]
    required = {f.name for f in fields(NetConfig) if f.default is MISSING}
    absent = sorted(required - set(config))
    if absent:
        raise CheckpointError(f"{path}: config lacks {', '.join(absent)}")
    return NetConfig(**{f.name: config[f.name] for f in fields(NetConfig) if f.name in config})


def mismatches(config: NetConfig, expected: Expected) -> list[str]:
    """Human-readable differences between a checkpoint's config and what params / data need."""
    sources = {"depth": "train.depth", "coordconv": "train.coordconv", "shape_head": "train.shape_head",
               "crop_size": "crop store image size", "n_verts": "data vertex count",
               "n_components": "artifacts/pca basis components", "input_size": "train.input_size",
               "pose_head": "train.pose_head"}
    if config.pose_head == "direct6dof":
        sources["pose_frame"] = "train.pose_frame"
    if config.coordconv:
        sources["coord_maps"] = "train.coord_maps"
    out = []
    for name, source in sources.items():
        have, want = getattr(config, name), getattr(expected, name)
        if have != want:
            out.append(f"{name} {have!r} in the checkpoint, {want!r} from {source}")
    return out


def load_network(path: Path | str, expected: Expected, inputs: dict[str, str]) -> FaceNet:
    """Rebuild the network of `path` and load its weights (on the CPU, in eval mode), after
    checking it against the params / data (`expected`) and the identity of the crop run and
    basis it is used with (`inputs`, see check_inputs)."""
    path = Path(path)
    saved = read_checkpoint(path)
    check_inputs(path, saved, inputs)
    config = config_of(path, saved)
    problems = mismatches(config, expected)
    if problems:
        raise CheckpointError(f"{path}: checkpoint does not match the params/data: " + "; ".join(problems))
    model = FaceNet(config, pretrained=False)
    try:
        model.load_state_dict(saved["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"{path}: weights do not fit its own config {config.to_dict()}: "
                              f"{' '.join(first[:3])[:400]}") from None
    return model.eval()


def load_network_for_images(path: Path | str, basis: Path, train: TrainParams, crop_size: int,
                            n_verts: int) -> FaceNet:
    """The network of `path` for crops made outside the crop store (predict, export): checked as
    infer checks it (train.* params, crop size, vertex count, PCA size) and against the identity
    of the PCA basis file `basis`, but not against a crop run (there is none)."""
    if not Path(basis).is_file():
        raise CheckpointError(f"{basis}: PCA basis not found (run `dvc repro pca`)")
    expected = Expected.of(train, crop_size, n_verts, PCABasis.load(basis).n_components)
    return load_network(path, expected, {"pca/basis.npz": path_digest(basis)})
