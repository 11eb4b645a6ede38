"""Write a synthetic data root in exactly the WCPA challenge layout (stages/wcpa/layout.py reads it).

Subjects are split into train and test; each has `actions_per_subject` facial-action folders
(the first is 'neutral') of `frames_per_action` images. Training samples get image, info and
68landmarks; test samples get image and 68landmarks, and their info goes to a separate ground
truth folder that the pipeline never reads as input. Every random draw comes from a seed derived
from (seed, split, subject, action, frame), so results do not depend on the number of workers.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from tqdm import tqdm

from stages.common.io import save_npy, save_npz
from stages.common.threads import single_thread_worker
from stages.synthetic.appearance import random_look
from stages.synthetic.blendshapes import ARKIT_NAMES, build_blendshapes
from stages.synthetic.model import build_face_model
from stages.synthetic.scene import ACTIONS, Frame, PoseStats, render_frame
from stages.wcpa.camera import Camera, rt_from_euler
from stages.wcpa.layout import image_path, info_path, landmarks_path, list_path, write_landmarks, write_list
from stages.wcpa.obj import write_obj

log = logging.getLogger(__name__)

# The challenge's projection matrix (the value its resources hold), row-vector OpenGL form. The generator is the one
# place that defines it; everything downstream reads resources/projection_matrix.txt.
PROJECTION_TEXT = ("1.57443701 0 0 0\n"
                   "0 1.57443701 0 0\n"
                   "0 0 -0.99999976 -1\n"
                   "0 0 -0.001 0\n")
SPLITS = {"train": 0, "test": 1}
CHUNK = 8


@dataclass(frozen=True)
class SynthConfig:
    """What to generate (see params.yaml `synth`)."""

    seed: int
    train_subjects: int
    test_subjects: int
    actions_per_subject: int
    frames_per_action: int
    image_size: int
    jpeg_quality: int
    identity_scale: float
    supersample: int
    blur_max: float
    noise_max: float
    pose: PoseStats


@dataclass(frozen=True)
class SampleSpec:
    split: str
    subject_index: int
    subject_id: str
    action_index: int
    facial_action: str
    frame_index: int
    img_id: str


def projection_camera(size: int) -> Camera:
    """The challenge camera for a size x size image."""
    values = np.array(PROJECTION_TEXT.split(), dtype=np.float64).reshape(4, 4)
    return Camera(values, size, size)


def subject_rng(cfg: SynthConfig, split: str, subject_index: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, SPLITS[split], subject_index, 0])


def subject_actions(cfg: SynthConfig, split: str, subject_index: int) -> list[str]:
    """'neutral' followed by distinct random actions for one subject."""
    rng = np.random.default_rng([cfg.seed, SPLITS[split], subject_index, 1])
    others = [a for a in ACTIONS if a != "neutral"]
    count = min(cfg.actions_per_subject - 1, len(others))
    return ["neutral"] + [others[k] for k in rng.choice(len(others), size=count, replace=False)]


def plan(cfg: SynthConfig) -> list[SampleSpec]:
    """All samples in list order: train subjects first, then test subjects (ids continue)."""
    specs = []
    counts = {"train": cfg.train_subjects, "test": cfg.test_subjects}
    number = 0
    for split in ("train", "test"):
        for s in range(counts[split]):
            number += 1
            for a, action in enumerate(subject_actions(cfg, split, s)):
                for f in range(cfg.frames_per_action):
                    specs.append(SampleSpec(split, s, f"{number:06d}", a, action, f, f"{f + 1:04d}"))
    return specs


def render_sample(cfg: SynthConfig, spec: SampleSpec) -> Frame:
    """Render one sample -> Frame (image (H, W, 3) uint8 RGB, verts (V, 3) float32, R_t (4, 4))."""
    model = build_face_model()
    srng = subject_rng(cfg, spec.split, spec.subject_index)
    identity = model.identity(cfg.identity_scale * srng.standard_normal(len(model.identity_names)))
    look = random_look(srng)
    rng = np.random.default_rng([cfg.seed, SPLITS[spec.split], spec.subject_index, 2,
                                 spec.action_index, spec.frame_index])
    return render_frame(model, identity, look, spec.facial_action, projection_camera(cfg.image_size), cfg.pose, rng,
                        cfg.supersample, cfg.blur_max, cfg.noise_max)


def write_sample(cfg: SynthConfig, spec: SampleSpec, root: Path, gt_root: Path) -> None:
    """Render a sample and write its image, landmarks and info (test info to gt_root)."""
    frame = render_sample(cfg, spec)
    model = build_face_model()
    camera = projection_camera(cfg.image_size)
    ok, jpeg = cv2.imencode(".jpg", cv2.cvtColor(frame.image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality])
    if not ok:
        raise OSError(f"JPEG encoding failed for {spec}")
    path = image_path(root, spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(jpeg.tobytes())
    write_landmarks(landmarks_path(root, spec), camera.project(frame.verts[model.kpt_ind], frame.R_t))
    info = info_path(root if spec.split == "train" else gt_root, spec)
    save_npz(info, verts=frame.verts.astype(np.float32), R_t=frame.R_t.astype(np.float64))


def _write_chunk(cfg: SynthConfig, specs: list[SampleSpec], root: Path, gt_root: Path) -> int:
    single_thread_worker()     # the pool has one process per core: no library pools inside
    for spec in specs:
        write_sample(cfg, spec, root, gt_root)
    return len(specs)


def write_lists(root: Path, specs: list[SampleSpec]) -> None:
    """list/WCPA_track2_{train,test}.csv and the subject id lists."""
    for split in ("train", "test"):
        rows = [(s.subject_id, s.facial_action, s.img_id) for s in specs if s.split == split]
        table = pd.DataFrame(rows, columns=["subject_id", "facial_action", "img_id"])
        write_list(list_path(root, split), table)
        subjects = list(dict.fromkeys(table.subject_id))
        (root / "list" / f"WCPA_track2_{split}_subject_id_list.txt").write_text("".join(f"{s}\n" for s in subjects))


def mean_pose(cfg: SynthConfig) -> np.ndarray:
    """R_t (4, 4) of the mean of the pose distribution."""
    return rt_from_euler(cfg.pose.rot_mean, cfg.pose.trans_mean)


def write_resources(root: Path, cfg: SynthConfig, n_test: int) -> None:
    """resources/: example.obj, kpt_ind.npy, projection_matrix.txt, example_submission.npy; and
    blendshapes/<ARKitName>.obj (each blendshape fully on, on the template)."""
    model = build_face_model()
    res = root / "resources"
    res.mkdir(parents=True, exist_ok=True)
    write_obj(res / "example.obj", model.template, model.faces)
    save_npy(res / "kpt_ind.npy", model.kpt_ind.astype(np.int64))
    (res / "projection_matrix.txt").write_text(PROJECTION_TEXT)
    R_t = mean_pose(cfg)
    row = np.concatenate([model.template.ravel(), R_t[:3, :3].ravel(), R_t[3, :3]]).astype(np.float32)
    save_npy(res / "example_submission.npy", np.tile(row, (n_test, 1)))
    for name, delta in zip(ARKIT_NAMES, build_blendshapes()):
        write_obj(root / "blendshapes" / f"{name}.obj", model.template + delta, model.faces)


def generate(cfg: SynthConfig, root: Path, gt_root: Path, workers: int) -> int:
    """Write the whole data root into `root` (and test ground truth into `gt_root`); returns
    the number of images."""
    specs = plan(cfg)
    root, gt_root = Path(root), Path(gt_root)
    write_lists(root, specs)
    write_resources(root, cfg, sum(s.split == "test" for s in specs))
    chunks = [specs[k:k + CHUNK] for k in range(0, len(specs), CHUNK)]
    log.info("rendering %d images (%d train, %d test) on %d workers", len(specs),
             sum(s.split == "train" for s in specs), sum(s.split == "test" for s in specs), workers)
    jobs = (delayed(_write_chunk)(cfg, chunk, root, gt_root) for chunk in chunks)
    with tqdm(total=len(specs), desc="synth", unit="img") as bar:
        for done in Parallel(n_jobs=workers, return_as="generator_unordered")(jobs):
            bar.update(done)
    return len(specs)
