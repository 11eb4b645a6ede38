"""Stage synth: generate the synthetic data root in the WCPA layout (README "Synthetic data").

Writes synth.out (images, info, 68landmarks, list, resources, blendshapes) and the test ground
truth into synth.test_gt_out, each atomically. When data.root points elsewhere (the real
download), nothing is generated: both outputs hold only a SKIPPED.txt marker.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from stages.common.io import atomic_dir
from stages.common.params import Params
from stages.common.stage import stage_main
from stages.synthetic.scene import PoseStats
from stages.synthetic.synth_data import SynthConfig, generate

log = logging.getLogger("synth")
MARKER = "SKIPPED.txt"


def config(params: Params) -> SynthConfig:
    """SynthConfig from the validated params."""
    s = params.synth
    for key in ("rot_mean", "rot_std", "trans_mean", "trans_std"):
        if len(getattr(s, key)) != 3:
            raise ValueError(f"params synth.{key}: expected 3 numbers, got {getattr(s, key)}")
    pose = PoseStats(rot_mean=np.array(s.rot_mean), rot_std=np.array(s.rot_std),
                     trans_mean=np.array(s.trans_mean), trans_std=np.array(s.trans_std), margin_px=s.margin_px)
    return SynthConfig(seed=params.seed, train_subjects=s.train_subjects, test_subjects=s.test_subjects,
                       actions_per_subject=s.actions_per_subject, frames_per_action=s.frames_per_action,
                       image_size=s.image_size, jpeg_quality=s.jpeg_quality, identity_scale=s.identity_scale,
                       supersample=s.supersample, blur_max=s.blur_max, noise_max=s.noise_max, pose=pose)


def uses_real_data(params: Params) -> bool:
    """True when data.root is not the synthetic output folder."""
    return os.path.normpath(params.data.root) != os.path.normpath(params.synth.out)


def write_markers(params: Params) -> None:
    """Replace both outputs by a SKIPPED.txt that says why nothing was generated."""
    text = (f"Synthetic data not generated: params data.root ({params.data.root}) is not "
            f"synth.out ({params.synth.out}), so the pipeline runs on that data root.\n")
    for out in (params.synth.out, params.synth.test_gt_out):
        with atomic_dir(out) as tmp:
            (Path(tmp) / MARKER).write_text(text)


def run(params: Params) -> None:
    s = params.synth
    if uses_real_data(params):
        log.info("data.root=%s is not synth.out=%s: real data in use, writing only %s markers",
                 params.data.root, s.out, MARKER)
        write_markers(params)
        return
    start = time.time()
    with atomic_dir(s.out) as root, atomic_dir(s.test_gt_out) as gt_root:
        count = generate(config(params), Path(root), Path(gt_root), s.workers)
    elapsed = time.time() - start
    log.info("wrote %d images to %s (test ground truth in %s) in %.0f s (%.1f images/s)",
             count, s.out, s.test_gt_out, elapsed, count / max(elapsed, 1e-9))


def main(argv: list[str] | None = None) -> None:
    stage_main(__doc__, run, argv=argv)


if __name__ == "__main__":
    main()
