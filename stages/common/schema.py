"""The schema of params.yaml: every section, every key and its type.

A type is a Python type (str, int, float, bool), `(type, None)` for an optional value, or
`[type]` for a list. Each stage owns its section; `data`, `seed` and `lambda` are shared.
Add a key here and in params.yaml (and in stages/profiles/*.yaml where it differs).
"""

SCHEMA = {
    "seed": int,
    "data": {
        "root": str,              # data root in the WCPA layout (synthetic or the real download)
        "test_gt": str,           # folder with test ground truth (info/ layout); '' when none
        "blendshapes": str,       # folder of <ARKitName>.obj blendshape meshes, for the PCA
        "workers": int,           # joblib workers for per-image work
        "skip_bad": bool,         # skip unreadable samples (listed in a file) instead of stopping
        "max_bad_fraction": float,  # with skip_bad, fail when more than this fraction is bad
    },
    "lambda": {
        "gnll": float,
        "vdc": float,
        "wpdc": float,
        "pnp": float,
    },
    "synth": {
        "out": str,
        "test_gt_out": str,
        "train_subjects": int,
        "test_subjects": int,
        "actions_per_subject": int,
        "frames_per_action": int,
        "image_size": int,
        "jpeg_quality": int,
        "workers": int,
        "identity_scale": float,
        "supersample": int,
        "blur_max": float,
        "noise_max": float,
        "rot_mean": [float],
        "rot_std": [float],
        "trans_mean": [float],
        "trans_std": [float],
        "margin_px": float,
        "sheet_samples": int,
    },
    "split": {
        "val_fraction": float,
    },
    "coarse_train": {
        "locate_backbone": str,   # torchvision backbone of pass 1 (whole image downscaled)
        "refine_backbone": str,   # torchvision backbone of pass 2 (square around the pass-1 face)
        "pretrained": bool,       # ImageNet weights (needs them in the torch hub cache)
        "locate_size": int,       # pass-1 input side, px
        "refine_size": int,       # pass-2 input side, px
        "refine_margin": float,   # pass-2 square side / longer side of the landmarks' box
        "head_width": int,        # channels of the feature pyramid and heatmap head
        "epochs": int,
        "batch_size": int,
        "lr": float,              # peak of the one-cycle schedule (AdamW)
        "weight_decay": float,
        "flip_prob": float,       # horizontal flip probability (landmarks mirrored + reordered)
        "locate_shift": float,    # augmentation: max shift, fraction of the input side
        "locate_scale": float,    # augmentation: max zoom factor (and 1/factor)
        "locate_rotate": float,   # augmentation: max rotation, degrees
        "refine_shift": float,
        "refine_scale": float,
        "refine_rotate": float,
    },
    "coarse_predict": {
        "batch_size": int,
        "refine_passes": int,     # pass 2 repeated, each time re-centred on the latest landmarks
        "flip_test": bool,        # average pass 2 with its mirrored run
        "amp": bool,              # mixed precision: float16 on CUDA, bfloat16 on CPUs with native bfloat16
    },
    "crop": {
        "source": str,            # landmarks that place the crop: coarse | given68 | gt (gt: train only)
        "detector": [str],        # dvc.yaml builds coarse_train/coarse_predict per entry: [coarse] with
                                  # source coarse or gt, [] with given68 (checked by the params loader)
        "size": int,              # crop side, px
        "margin": float,          # crop side / side of the reference face (whole mesh) in the crop
        "rotation": str,          # what levels the face: eye_line | pose (roll of a PnP fit)
        "chunk": int,             # images per work unit (the resume granularity)
    },
    "submit": {
        "predictors": [str],
    },
    "evaluate": {
        "sheet_samples": int,     # samples on each qualitative sheet (half best, half worst)
        "tile_size": int,         # side of a sheet tile, px
        "bins": int,              # bins of the error histograms and of the error-vs-yaw/distance curves
    },
    "pca": {
        "n_components": int,      # PCA components (clamped, with a warning, to meshes - 1)
        "neutral_list": str,      # CSV of ids (subject_id, facial_action, img_id); '' = automatic
        "allow_missing_blendshapes": bool,  # fit without data.blendshapes (a warning) instead of failing
        "max_frames_per_subject": int,      # neutral selection scores at most this many frames per subject
    },
    "train": {
        "depth": int,             # torchvision ResNet depth: 18, 34 or 50
        "pretrained": bool,       # ImageNet weights through torchvision (must be in the torch hub cache)
        "coordconv": bool,        # 5-channel input (RGB + crop X, Y maps) instead of RGB
        "input_size": int,        # crop resized to this side before the backbone (0 = the crop size)
        "shape_head": str,        # pca (coefficients, sec. 2.3) | direct (vertices, Table 2)
        "landmark_loss": str,     # gnll (eq. 1) | mse (gnll with sigma fixed to 1 px)
        "epochs": int,
        "batch_size": int,
        "lr": float,              # Adam learning rate
        "schedule": str,          # constant | cosine (per step, to lr * min_lr_ratio)
        "min_lr_ratio": float,
        "weight_decay": float,
        "flip": float,            # horizontal flip probability
        "color_jitter": float,    # brightness/contrast/saturation strength (hue: a quarter of it)
        "reframe_shift": float,   # crop reframing: largest shift of the centre, fraction of the crop side
        "reframe_scale": float,   # largest |log zoom| (0.1: zoom 0.90-1.11)
        "reframe_rotate": float,  # largest rotation, degrees
        "workers": int,           # DataLoader worker processes (0 = load in the main process)
        "device": str,            # auto | cpu | cuda
        "amp": bool,              # float16 autocast + GradScaler on CUDA; bfloat16 autocast on CPUs with
                                  # native bfloat16 (AVX512-BF16, AMX), float32 on others
        "val_batch_size": int,
        "val_pnp_flags": str,     # OpenCV PnP of the per-epoch validation (cv2.SOLVEPNP_<name>)
    },
    "finetune": {                 # stage finetune (EPro-PnP, eq. 4-6); reads lambda.* too
        "epochs": int,
        "batch_size": int,
        "lr": float,              # Adam learning rate
        "schedule": str,          # constant | cosine (per step, to lr * min_lr_ratio)
        "min_lr_ratio": float,
        "weight_decay": float,
        "flip": float,            # horizontal flip probability
        "color_jitter": float,    # as train.color_jitter
        "reframe_shift": float,   # as train.reframe_*
        "reframe_scale": float,
        "reframe_rotate": float,
        "workers": int,           # DataLoader worker processes (0 = load in the main process)
        "device": str,            # auto | cpu | cuda
        "amp": bool,              # float16 autocast + GradScaler on CUDA; bfloat16 autocast on CPUs with
                                  # native bfloat16 (AVX512-BF16, AMX), float32 on others
        "val_batch_size": int,
        "val_pnp_flags": str,     # OpenCV PnP of the validation (as train.val_pnp_flags)
        "mc_weight": float,       # weight of EPro-PnP's Monte Carlo NLL (nats; trains sigma with the pose)
        "mc_samples": int,        # Monte Carlo poses per sample (AMIS)
        "amis_iters": int,        # AMIS proposals the samples are split over
        "lm_iters": int,          # most Levenberg-Marquardt iterations of the PnP solve
        "pnp_points": int,        # vertices in the PnP, a random subset per batch (0 = all)
        "pnp_dtype": str,         # float32 | float64: precision of the PnP layer
    },
    "infer": {
        "checkpoint": str,        # network of artifacts/<checkpoint>/model.pt: finetune | train
        "batch_size": int,        # crops per forward (each pass runs 2x this with flip & merge)
        "flip_merge": str,        # none | 3d (merge the mesh only, the paper) | both (mesh and landmarks)
        "pnp": str,               # opencv (cv2.solvePnP) | batched (stages/pnp LM, weights 1 / sigma)
        "pnp_flags": str,         # OpenCV method cv2.SOLVEPNP_<name> (ITERATIVE, EPNP, SQPNP, ...), or
                                  # <name>+ITERATIVE: that method's pose refined by OpenCV's LM
        "device": str,            # auto | cpu | cuda
        "amp": bool,              # autocast: float16 on CUDA, bfloat16 on CPUs with native bfloat16
        "workers": int,           # PnP threads (run while the network does the next batch)
        "max_pnp_failures": float,  # fraction of rows whose PnP may fail (mean pose instead); more stops
    },
}
