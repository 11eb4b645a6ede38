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

With --memory, the peak of the Python heap (tracemalloc: numpy's arrays are traced) of the CPU
part on --samples and 4x as many samples, all at once against blocks of
stages.nets.validate.BLOCK (as the trainer validates), the network's outputs held for the
first and made a block at a time for the second: its growth with the split.

    python -m benchmarks.bench_val [--samples 4096] [--rounds 3] [--workers N] [--memory]
"""
from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from stages.common.threads import single_thread_blas, usable_cores
from stages.face.warp import invert_warp
from stages.nets.validate import (block_figures, block_rows, evaluate, summary_of, validation_poses,
                                  validation_targets)
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
    pnp = validation_poses(pred["verts"], pred["mu"], camera, "SQPNP", workers)
    return {"all": timed(lambda: evaluate(pred, inv, camera, verts, poses,
                                          validation_targets(camera, verts, poses, warps, workers), "SQPNP", 0, "crop",
                                          workers)),
            "pnp": timed(lambda: validation_poses(pred["verts"], pred["mu"], camera, "SQPNP", workers)),
            "errors": timed(lambda: sample_errors(verts, poses, pred["verts"], pnp, workers))}


def traced_peak(call) -> float:
    """MiB: the peak of the traced heap during call(), above what was held before it."""
    tracemalloc.start()
    call()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def validation_peaks(samples: int, workers: int) -> dict[str, float]:
    """MiB of the validation's CPU part on `samples` samples: all at once (their predictions,
    labels and targets held) and in blocks (each block's made and dropped in turn)."""
    camera = challenge_camera()

    def whole() -> None:
        case = val_case(samples)
        evaluate(case["pred"], invert_warp(case["warps"]), camera, case["verts"], case["poses"],
                 validation_targets(camera, case["verts"], case["poses"], case["warps"], workers), "SQPNP", 0, "crop",
                 workers)

    def one_block(rows: np.ndarray):
        case = val_case(len(rows), seed=int(rows[0]))
        return block_figures(case["pred"], invert_warp(case["warps"]), camera, case["verts"], case["poses"],
                             validation_targets(camera, case["verts"], case["poses"], case["warps"], workers),
                             "SQPNP", 0, "crop", workers)

    def blocked() -> None:
        summary_of([one_block(rows) for rows in block_rows(np.arange(samples), 256)], workers)

    return {"all at once": traced_peak(whole), "in blocks": traced_peak(blocked)}


def print_peaks(samples: int, workers: int) -> None:
    """The validation's peak heap on `samples` and 4x as many, both ways, and their growth."""
    small, large = validation_peaks(samples, workers), validation_peaks(4 * samples, workers)
    for way in small:
        print(f"validation's CPU part {way}: peak heap {small[way]:.0f} MiB on {samples:,} samples, "
              f"{large[way]:.0f} on {4 * samples:,}: {large[way] / small[way]:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4096)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=usable_cores(), help="threads of the parallel run")
    parser.add_argument("--memory", action="store_true", help="the peak heap, all at once and in blocks")
    args = parser.parse_args()
    single_thread_blas()                  # as in the training process (stages.nets.trainer)
    if args.memory:
        print_peaks(args.samples, args.workers)
        return
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
