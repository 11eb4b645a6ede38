"""The schema of params.yaml: every section, every key, its type and its allowed values.

A type is a Python type (str, int, float, bool), `(type, None)` for an optional value,
`[type]` for a list, `Range(type, low, high)` for a number within bounds, or `Choice(a, b, ...)`
for one of a few values, `OrAuto(kind)` for the word `auto` (resolved where the value is used)
or a value of `kind`. Each stage owns its section; `data`, `seed` and `lambda` are shared, and
`gpus` and `sync_batchnorm` by the three training stages.
Add a key here and in params.yaml (and in stages/profiles/*.yaml where it differs).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Range:
    """A number of type `kind` within [low, high] (None: unbounded); open=True excludes both ends;
    multiple: it must be a multiple of this (None: any)."""

    kind: type
    low: float | None = None
    high: float | None = None
    open: bool = False
    multiple: int | None = None


class Choice:
    """One of the listed values (their type is the key's type)."""

    def __init__(self, *values):
        self.values = values
        self.kind = type(values[0])

    def __repr__(self) -> str:
        return f"Choice{self.values!r}"


@dataclass(frozen=True)
class OrAuto:
    """The word `auto` or a value of `kind` (a type, Range or Choice)."""

    kind: object


AUTO = "auto"
COUNT = Range(int, 1)                    # sizes, epochs, batch sizes: at least one
NON_NEGATIVE = Range(int, 0)             # counts where 0 means off / all / in the main process
FRACTION = Range(float, 0.0, 1.0)        # probabilities and fractions, ends included
OPEN_FRACTION = Range(float, 0.0, 1.0, open=True)
POSITIVE = Range(float, 0.0, open=True)  # learning rates, margins: > 0
WEIGHT = Range(float, 0.0)               # loss weights, augmentation strengths: >= 0
DEVICE = Choice("auto", "cpu", "cuda")
# OpenCV's PnP methods for many points (cv2.SOLVEPNP_<name>; P3P and AP3P take exactly 4 points,
# IPPE only planar ones), and the same refined by OpenCV's Levenberg-Marquardt (<name>+ITERATIVE)
PNP_METHODS = ("ITERATIVE", "EPNP", "SQPNP")
PNP_FLAGS = Choice(*PNP_METHODS, *(f"{name}+ITERATIVE" for name in PNP_METHODS if name != "ITERATIVE"))
SCHEDULE = Choice("constant", "cosine")
# the detector's input sides: its backbones' stride, so that the heatmap cells lie 4 px apart and
# the feature pyramid's upsampled levels line up (98 px gave 25 cells 3.92 px apart)
VIEW_SIZE = Range(int, 32, multiple=32)
BACKBONE = Choice("resnet18", "resnet34", "resnet50", "mobilenet_v3_small", "mobilenet_v3_large")  # coarse/model.py


OPTIMIZATION = {                  # the keys train and finetune share: the optimisation and its data
    "batch_size": COUNT,
    "lr": POSITIVE,           # Adam learning rate
    "schedule": SCHEDULE,     # constant | cosine (per step, to lr * min_lr_ratio)
    "min_lr_ratio": FRACTION,
    "warmup_epochs": WEIGHT,  # linear warm-up of the lr over the first epochs (fractions allowed; 0 = none)
    "weight_decay": WEIGHT,
    "flip": FRACTION,         # horizontal flip probability
    "color_jitter": WEIGHT,   # brightness/contrast/saturation strength (hue: a quarter of it)
    "reframe_shift": WEIGHT,  # crop reframing: largest shift of the centre, fraction of the crop side
    "reframe_scale": WEIGHT,  # largest |log zoom| (0.1: zoom 0.90-1.11)
    "reframe_rotate": WEIGHT, # largest rotation, degrees
    "workers": NON_NEGATIVE,  # DataLoader worker processes (0 = load in the main process)
    "device": DEVICE,         # auto | cpu | cuda
    "amp": bool,              # bfloat16 autocast on CUDA with bfloat16 (else float16 + GradScaler);
                              # bfloat16 on CPUs with native bfloat16 (AVX512-BF16, AMX), float32 on others
    "compile": bool,          # torch.compile the network of the training step (a GPU's speed-up after a
                              # minute of compiling; the saved weights are the plain module's); finetune:
                              # also the PnP layer's sample costs and LM iteration (stages/pnp/compiled.py)
    "val_batch_size": COUNT,
    "val_pnp_flags": PNP_FLAGS,   # OpenCV PnP of the per-epoch validation (as infer.pnp_flags)
}

SCHEMA = {
    "seed": int,
    "gpus": COUNT,                # processes (one per GPU) of coarse_train, train, finetune: stages/launch.py
    "sync_batchnorm": bool,       # with gpus > 1: BatchNorm normalises over the global batch (nn.SyncBatchNorm,
                                  # CUDA only), not each process's share
    "data": {
        "root": str,              # data root in the WCPA layout (synthetic or the real download)
        "test_gt": str,           # folder with test ground truth (info/ layout); data/no_test_gt: none
        "blendshapes": str,       # folder of <ARKitName>.obj blendshape meshes, for the PCA; data/no_blendshapes: none
        "workers": COUNT,         # processes or threads of the per-image work (decode, labels, errors)
        "skip_bad": bool,         # skip unreadable samples (listed in a file) instead of stopping
        "max_bad_fraction": FRACTION,  # with skip_bad, fail when more than this fraction is bad
    },
    "lambda": {
        "landmarks": WEIGHT,      # landmark term: GNLL (eq. 1) or MSE (train.landmark_loss)
        "vdc": WEIGHT,
        "wpdc": WEIGHT,
        "pnp": WEIGHT,            # eq. 5 (finetune only)
        "mc": WEIGHT,             # EPro-PnP's Monte Carlo NLL (finetune only; nats, trains sigma with the pose)
        "rot": WEIGHT,            # direct 6DoF head (train.pose_head): geodesic rotation error, per degree
        "trans": WEIGHT,          # direct 6DoF head: squared translation error, per mm^2
    },
    "synth": {
        "out": str,
        "test_gt_out": str,
        "train_subjects": COUNT,
        "test_subjects": COUNT,
        "actions_per_subject": COUNT,
        "frames_per_action": COUNT,
        "image_size": COUNT,
        "jpeg_quality": Range(int, 0, 100),
        "workers": COUNT,
        "identity_scale": WEIGHT,
        "supersample": COUNT,
        "blur_max": WEIGHT,
        "noise_max": WEIGHT,
        "rot_mean": [float],
        "rot_std": [float],
        "trans_mean": [float],
        "trans_std": [float],
        "margin_px": WEIGHT,
        "sheet_samples": NON_NEGATIVE,
    },
    "split": {
        "val_fraction": OPEN_FRACTION,
    },
    "coarse_train": {
        "locate_backbone": BACKBONE,  # torchvision backbone of pass 1 (whole image downscaled)
        "refine_backbone": BACKBONE,  # torchvision backbone of pass 2 (square around the pass-1 face)
        "pretrained": bool,       # ImageNet weights (needs them in the torch hub cache)
        "locate_size": VIEW_SIZE,  # pass-1 input side, px
        "refine_size": VIEW_SIZE,  # pass-2 input side, px
        "refine_margin": POSITIVE,  # pass-2 square side / longer side of the landmarks' box
        "head_width": COUNT,      # channels of the feature pyramid and heatmap head
        "epochs": COUNT,
        "batch_size": COUNT,
        "lr": POSITIVE,           # peak of the one-cycle schedule (AdamW)
        "weight_decay": WEIGHT,
        "flip_prob": FRACTION,    # horizontal flip probability (landmarks mirrored + reordered)
        "locate_shift": WEIGHT,   # augmentation: max shift, fraction of the input side
        "locate_scale": Range(float, 1.0),  # augmentation: max zoom factor (and 1/factor)
        "locate_rotate": WEIGHT,  # augmentation: max rotation, degrees
        "refine_shift": WEIGHT,
        "refine_scale": Range(float, 1.0),
        "refine_rotate": WEIGHT,
        "decode": Choice("auto", "opencv", "torch"),  # views made in the loader processes (OpenCV) or decoded, warped
                                  # and augmented in batches on the device (torch); auto: torch on CUDA, else OpenCV
        "augment": Choice("auto", "opencv", "torch"),  # the OpenCV path's photometric augmentation: albumentations in
                                  # the loader processes, or in batches on the device; auto: torch on CUDA
        "compile": bool,          # torch.compile the training step's nets (GPU machines: stages/profiles/gpu.yaml)
    },
    "coarse_predict": {
        "batch_size": COUNT,
        "refine_passes": NON_NEGATIVE,  # pass 2 repeated, each time re-centred on the latest landmarks
        "flip_test": bool,        # average pass 2 with its mirrored run
        "settle": WEIGHT,         # > 0: an image stops refining once a pass after its first moves its landmarks
                                  # by less than this share of the face (the median point; 0: every refine pass)
        "amp": bool,              # mixed precision: bfloat16 on CUDA (float16 before Ampere) and on CPUs with native bfloat16
        "decode": Choice("auto", "opencv", "torch"),  # images decoded and warped on worker threads (OpenCV) or in
                                  # batches on the detector's device (torch); auto: torch on CUDA, else OpenCV
    },
    "crop": {
        "source": Choice("coarse", "given68", "gt"),  # landmarks that place the crop (gt: train only)
        "detector": [str],        # dvc.yaml builds coarse_train/coarse_predict per entry: [coarse] with
                                  # source coarse or gt, [] with given68 (checked by the params loader)
        "size": COUNT,            # crop side, px
        "margin": POSITIVE,       # crop side / side of the reference face (whole mesh) in the crop
        "rotation": Choice("eye_line", "pose"),  # what levels the face (pose: roll of a PnP fit)
        "chunk": COUNT,           # images per work unit (the resume granularity; the torch path's batch)
        "decode": Choice("auto", "opencv", "torch"),  # decode + warp: OpenCV threads, or torchvision's batched
                                  # decode_jpeg and warp_images on the device; auto: torch on CUDA, else OpenCV
    },
    "submit": {
        "predictors": [str],
    },
    "evaluate": {
        "sheet_samples": NON_NEGATIVE,  # samples on each qualitative sheet (half best, half worst)
        "tile_size": COUNT,       # side of a sheet tile, px
        "bins": COUNT,            # bins of the error histograms and of the error-vs-yaw/distance curves
    },
    "pca": {
        "n_components": COUNT,    # PCA components (clamped, with a warning, to meshes - 1)
        "neutral_list": str,      # CSV of ids (subject_id, facial_action, img_id), a dep of pca; no rows = automatic
        "max_frames_per_subject": COUNT,  # neutral selection scores at most this many frames per subject
        "neutral_subjects": NON_NEGATIVE,  # automatic choice: the neutral meshes of this many training subjects (a
                                  # seeded draw; the paper's 200), 0: of every one
        "data_expressions": NON_NEGATIVE,  # without blendshapes: expression modes of the training frames in
                                  # their place (stages.face.pca.expression_modes); 0: the neutral meshes alone
    },
    "train": {
        "depth": Choice(18, 34, 50),  # torchvision ResNet depth: 18, 34 or 50
        "pretrained": bool,       # ImageNet weights through torchvision (must be in the torch hub cache)
        "coordconv": bool,        # 5-channel input (RGB + X, Y maps) instead of RGB
        "coord_maps": Choice("crop", "image"),  # CoordConv's maps: crop pixel positions (sec. 2.2.2) | each crop
                                  # pixel's position in the full image (Direct 6DoF with CoordConv, sec. 3.2.1)
        "input_size": NON_NEGATIVE,  # crop resized to this side before the backbone (0 = the crop size)
        "shape_head": Choice("pca", "direct"),  # pca (coefficients, sec. 2.3) | direct (vertices, Table 2)
        "landmark_loss": Choice("gnll", "mse"),  # gnll (eq. 1) | mse (gnll with sigma fixed to 1 px)
        "wpdc_weights": Choice("fixed", "per_sample"),  # eq. 3's W: fixed (each coefficient's RMS vertex
                                  # displacement: WPDC = VDC's in-span part) | per_sample (3DDFA's)
        "pose_head": Choice("pnp", "direct6dof"),  # pnp (landmarks + PnP) | direct6dof (6D rotation +
                                  # translation, Table 1; needs infer.checkpoint train)
        "pose_frame": Choice("crop", "camera"),  # direct6dof: the pose regressed in the crop's frame | in the
                                  # camera's, as the paper's Direct 6DoF (stages.nets.pose_frame)
        "gnll_beta": FRACTION,    # beta-NLL gradient weight sigma^(2 beta) of eq. 1 (its value unchanged)
        "sigma_backbone": bool,   # sigma's gradient reaches the backbone (true) or trains its FC alone
        "epochs": COUNT,
        **OPTIMIZATION,
    },
    "finetune": {                 # stage finetune (EPro-PnP, eq. 4-6); reads lambda.* too
        "epochs": NON_NEGATIVE,   # 0: the start model, unchanged
        **OPTIMIZATION,
        "mc_samples": COUNT,      # Monte Carlo poses per sample (AMIS)
        "amis_iters": COUNT,      # AMIS proposals the samples are split over
        "lm_iters": COUNT,        # most Levenberg-Marquardt iterations of the PnP solve
        "pnp_points": NON_NEGATIVE,  # vertices in the PnP, a random subset per batch (0 = all)
        "pnp_dtype": Choice("float32", "float64"),  # float32 | float64: precision of the PnP layer
        "cuda_graph": bool,       # replay the PnP layer's forward and backward from CUDA graphs
                                  # (stages/common/cuda_graph.py): needs compile: true and a CUDA device
    },
    "infer": {
        "checkpoint": Choice("finetune", "train"),  # network of artifacts/<checkpoint>/model.pt
        "batch_size": COUNT,      # crops per forward (each pass runs 2x this with flip & merge)
        "flip_merge": Choice("none", "3d", "both"),  # 3d: merge the mesh only (the paper); both: and landmarks
        "pnp": Choice("opencv", "batched"),  # cv2.solvePnP | stages/pnp LM, weights 1 / sigma
        "pnp_flags": PNP_FLAGS,   # OpenCV method cv2.SOLVEPNP_<name> (ITERATIVE, EPNP, SQPNP, ...), or
                                  # <name>+ITERATIVE: that method's pose refined by OpenCV's LM
        "device": DEVICE,         # auto | cpu | cuda
        "amp": bool,              # autocast: bfloat16 on CUDA (float16 before Ampere) and on CPUs with native bfloat16
        "workers": OrAuto(COUNT),  # PnP threads (run while the network does the next batch); auto: the
                                   # cores this process may use (os.sched_getaffinity)
        "max_pnp_failures": FRACTION,  # fraction of rows whose PnP may fail (mean pose instead); more stops
        "cuda_graph": bool,       # replay each batch's network pass from a CUDA graph
                                  # (stages/common/cuda_graph.py): needs a CUDA device
    },
}

# Keys that set how fast a stage runs, not what it makes: its processes and threads, its resume
# granularity, compiled or graphed code (the same arithmetic to float rounding, as between two
# GPUs) and the batches of networks in eval mode (each image's outputs its own: validation,
# coarse_predict, infer). dvc.yaml lists them for no stage: a change reruns nothing
# (tests/unit/test_architecture.py holds every other key of a stage's own section listed).
SPEED_KEYS = frozenset({
    "data.workers", "synth.workers", "crop.chunk", "coarse_train.compile", "coarse_predict.batch_size",
    "train.workers", "train.compile", "train.val_batch_size",
    "finetune.workers", "finetune.compile", "finetune.cuda_graph", "finetune.val_batch_size",
    "infer.workers", "infer.cuda_graph", "infer.batch_size",
})
