"""The CPU part of train's and finetune's per-epoch validation, on one thread against a thread
per core, in the same process (issue 17: validation at the real val split's size must not
dominate an epoch).

After the network's forward, `stages.nets.validate.evaluate` solves each sample's pose with
OpenCV's PnP (val_pnp_flags, SQPNP) and computes the score's per-sample errors and the landmark
and sigma figures; the trainer first projects the 2D targets (crop_targets). Here on
--samples synthetic faces (tests/unit/pnp_cases.py: the challenge camera, 1,220 points a face,
1 px noise; the crop is the full image), in interleaved rounds, best of --rounds. Printed per
thread count: ms a sample in all and in its parts (PnP, per-sample errors, the rest), and the
seconds for the real val split (71,000 samples: 20 % of the training subjects), against a train
epoch of the other 285,000 images at the H200's measured 4,162 images/s (68 s, docs/benchmarks.md).

    python -m benchmarks.bench_val [--samples 4096] [--rounds 3] [--workers N]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from stages.common.threads import single_thread_blas, usable_cores
from stages.face.warp import invert_warp
from stages.nets.validate import evaluate, validation_poses, validation_targets
from stages.wcpa.score import sample_errors
from tests.unit.pnp_cases import challenge_camera, make_problems

REAL_VAL = 71_000
H200_EPOCH_S = 285_000 / 4_162


def val_case(samples: int, seed: int = 0) -> dict:
    """Predictions and ground truth of `samples` synthetic val samples (evaluate's arguments)."""
    rng = np.random.default_rng(seed)
    case = make_problems(rng, samples, 1220, noise_px=1.0)
    warps = np.tile(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), (samples, 1, 1))
    verts = case["x3d"].astype(np.float32)
    pred = {"verts": verts + rng.normal(0, 1e-3, verts.shape).astype(np.float32),
            "mu": case["x2d"].astype(np.float32), "sigma": np.ones(verts.shape[:2], np.float32)}
    return {"pred": pred, "verts": verts, "poses": case["R_t"], "warps": warps}


def timed(call) -> float:
    """Seconds of one call."""
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def phase_seconds(case: dict, workers: int) -> dict[str, float]:
    """Seconds of the validation's CPU part and of its PnP and per-sample errors on `workers` threads."""
    camera, pred, verts, poses, warps = challenge_camera(), case["pred"], case["verts"], case["poses"], case["warps"]
    inv = invert_warp(warps)
    pnp = validation_poses(pred["verts"], pred["mu"], camera, "SQPNP", workers)[0]
    return {"all": timed(lambda: evaluate(pred, inv, camera, verts, poses,
                                          validation_targets(camera, verts, poses, warps, workers), "SQPNP", 0, "crop",
                                          workers)),
            "pnp": timed(lambda: validation_poses(pred["verts"], pred["mu"], camera, "SQPNP", workers)),
            "errors": timed(lambda: sample_errors(verts, poses, pred["verts"], pnp, workers))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cores(), help="threads of the parallel run")
    args = parser.parse_args()
    single_thread_blas()                  # as in the training process (stages.nets.trainer)
    case = val_case(args.samples)
    counts = sorted({1, args.workers})
    best = {n: {} for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            for key, seconds in phase_seconds(case, n).items():
                best[n][key] = min(best[n].get(key, np.inf), seconds)
    for n in counts:
        ms = {key: seconds / args.samples * 1e3 for key, seconds in best[n].items()}
        real = ms["all"] * REAL_VAL / 1e3
        print(f"{n} thread(s): {ms['all']:.3f} ms a sample (PnP {ms['pnp']:.3f}, errors {ms['errors']:.3f}, "
              f"the rest {ms['all'] - ms['pnp'] - ms['errors']:.3f}); {REAL_VAL:,} val samples {real:.1f} s "
              f"= {real / H200_EPOCH_S:.2f} of an H200 train epoch ({H200_EPOCH_S:.0f} s)")
    if len(counts) > 1:
        print(f"speed-up on {args.workers} threads: {best[1]['all'] / best[args.workers]['all']:.2f}")


if __name__ == "__main__":
    main()
