"""Speed and memory of the batched PnP layer (stages/pnp), against OpenCV in the same process.

    .venv/bin/python -m benchmarks.bench_pnp [--threads 2] [--repeats 3] [--accuracy | --chunks]

1. Solve (DLT start + LM), 256 problems x 1,220 points, 1.5 px noise, float64 and float32,
   against cv2.solvePnP(SOLVEPNP_ITERATIVE) in a Python loop over the same problems.
2. EPro-PnP Monte Carlo loss, forward + backward, 32 problems x 512 samples (float32), eager
   and with the compiled sample-cost kernels (the first compiled call is timed separately).
3. Peak RSS increase of the loss (forward + backward) for 256 problems x 512 samples, each mode
   in a fresh subprocess.
4. With --accuracy (instead of 1-3): the loss against its Laplace closed form
   (tests.unit.pnp_laplace) in float32 and float64, and on planar and near-planar point sets.
5. With --chunks (instead of 1-3): the eager loss, forward + backward (float32, the LM solution
   given), at a few sample-cost chunk sizes on the finetune stage's shapes (params.yaml and the
   paper profile), as ratios to the CPU default chunk (stages.pnp.sample_cost.CPU_CHUNK_POSES),
   in interleaved rounds.
6. With --gil (instead of 1-3): inference's OpenCV PnP path (stages.nets.poses.solve_poses, one
   thread) on 256 faces of 1,220 points, 1.5 px noise, against the same cv2 calls in a bare loop
   (the reference, interleaved): microseconds a face each, and the difference, the Python a
   PnP thread runs holding the GIL, which the thread that feeds the GPU then waits for.
Times are the best of --repeats runs (other processes share the cores).
"""
from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import cv2
import numpy as np
import torch

from stages.common.params import load_params
from stages.nets.poses import solve_poses
from stages.synthetic.topology import N_VERTS     # the challenge mesh's 1220 vertices
from stages.pnp.api import PnPResult, solve_pnp, solve_sanitised
from stages.pnp.cost import planar
from stages.pnp.epro import epro_pnp
from stages.pnp.opencv import opencv_flag, solve_pnp_opencv, split_flags
from stages.pnp.sample_cost import CPU_CHUNK_POSES
from stages.profile import profile_params
from tests.unit.pnp_cases import challenge_camera, make_problems, rotation_error_rad
from tests.unit.pnp_laplace import laplace_losses

CHUNK_CHOICES = (64, 128, 512, 2048, 8192)     # poses, timed against CPU_CHUNK_POSES


def best_time(fn, repeats: int) -> tuple[float, object]:
    """Best wall time (s) of fn() over repeats, and its last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def bench_solve(repeats: int) -> None:
    case = make_problems(np.random.default_rng(0), 256, 1220, noise_px=1.5)
    t_cv, (R_cv, tr_cv) = best_time(
        lambda: solve_pnp_opencv(case["x3d"], case["x2d"], case["K"], "ITERATIVE"), repeats)
    print(f"solve 256 x 1220: OpenCV ITERATIVE loop {t_cv * 1000:.1f} ms")
    for dtype in (torch.float64, torch.float32):
        x3d, x2d, K = (torch.tensor(case[k], dtype=dtype) for k in ("x3d", "x2d", "K"))
        t_b, result = best_time(lambda: solve_pnp(x3d, x2d, K), repeats)
        rot = np.degrees(rotation_error_rad(result.R.double().numpy(), R_cv)).max()
        trans = np.abs(result.t.double().numpy() - tr_cv).max() * 1000
        print(f"  batched {str(dtype):14s} {t_b * 1000:7.1f} ms  speed-up x{t_cv / t_b:.2f}  "
              f"iterations {result.iterations}  max diff to OpenCV {rot:.2e} deg {trans:.2e} mm")


def loss_inputs(batch: int, seed: int = 1, points: int = N_VERTS):
    rng = np.random.default_rng(seed)
    sigma = rng.uniform(0.5, 3.0, size=(batch, points, 2))
    case = make_problems(rng, batch, points, sigma=sigma)
    f32 = lambda a: torch.tensor(a, dtype=torch.float32)   # noqa: E731
    leaves = [f32(case["x3d"]).requires_grad_(), f32(case["x2d"]).requires_grad_(),
              f32(1 / sigma).requires_grad_()]
    return leaves, f32(case["K"]), f32(case["R"]), f32(case["t"])


def run_loss(leaves, K, R, t, compiled: bool, chunk_size: int | None = None,
             n_samples: int = 512, n_iters: int = 4, solution: PnPResult | None = None):
    for leaf in leaves:
        leaf.grad = None
    out = epro_pnp(*leaves, K, R, t, n_samples=n_samples, n_iters=n_iters,
                   chunk_size=chunk_size, compiled=compiled,
                   generator=torch.Generator().manual_seed(0), solution=solution)
    out.loss[out.mask].mean().backward()
    return out


def bench_loss(repeats: int) -> None:
    leaves, K, R, t = loss_inputs(32)
    print("EPro-PnP loss, 32 problems x 512 samples x 1220 points, forward + backward (float32):")
    results = {}
    for compiled in (False, True):
        if compiled:
            first, _ = best_time(lambda: run_loss(leaves, K, R, t, True), 1)
            print(f"  compiled: first call (compiles or loads the cache) {first:.1f} s")
        t_l, out = best_time(lambda: run_loss(leaves, K, R, t, compiled), repeats)
        results[compiled] = (out.loss.detach().clone(), [x.grad.clone() for x in leaves])
        print(f"  {'compiled' if compiled else 'eager':8s} {t_l * 1000:7.1f} ms  "
              f"ESS mean {out.ess.mean():.0f} min {out.ess.min():.0f} of 512  "
              f"loss mean {out.loss[out.mask].mean():.2f}")
    (l_e, g_e), (l_c, g_c) = results[False], results[True]
    grad_diff = max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(g_c, g_e))
    print(f"  compiled vs eager: loss {(l_c - l_e).abs().max():.2e}, gradients (relative) "
          f"{grad_diff:.2e}")


def memory_child(compiled: bool) -> None:
    """In a subprocess: peak RSS increase (MB) of one loss forward + backward, 256 x 512."""
    torch.set_num_threads(2)
    leaves, K, R, t = loss_inputs(256)
    run_loss([x.detach()[:2].requires_grad_() for x in leaves], K, R[:2], t[:2], compiled)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    run_loss(leaves, K, R, t, compiled)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"peak_increase_mb": (after - before) / 1024, "seconds": seconds}))


def bench_memory() -> None:
    print("EPro-PnP loss, 256 problems x 512 samples, peak RSS increase (fresh subprocess):")
    for compiled in (False, True):
        code = ("from benchmarks.bench_pnp import memory_child; "
                f"memory_child({compiled})")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        stats = json.loads(out)
        print(f"  {'compiled' if compiled else 'eager':8s} {stats['peak_increase_mb']:7.0f} MB  "
              f"({stats['seconds']:.2f} s forward + backward)")


def case_tensors(case: dict, w2d: np.ndarray, dtype: torch.dtype) -> list[torch.Tensor]:
    """x3d, x2d, w2d, K, R, t of a make_problems case as tensors of dtype."""
    return [torch.tensor(a, dtype=dtype) for a in (case["x3d"], case["x2d"], w2d, case["K"],
                                                    case["R"], case["t"])]


def bench_accuracy() -> None:
    print("EPro-PnP loss minus its Laplace closed form, 16 problems, 1024 samples (dof 30):")
    for points, noise in ((256, 0.15), (1220, 1.0)):
        case = make_problems(np.random.default_rng(11), 16, points, noise_px=noise)
        w2d = np.full(case["x2d"].shape, 1 / noise)
        closed = laplace_losses(case, w2d)
        gaps = []
        for dtype in (torch.float32, torch.float64):
            with torch.no_grad():
                out = epro_pnp(*case_tensors(case, w2d, dtype), n_samples=1024, dof=30,
                               generator=torch.Generator().manual_seed(12))
            gaps.append(f"{str(dtype)[6:]} {(out.loss.double().numpy() - closed).mean():+.4f}")
        print(f"  {points} points, {noise} px: closed form {closed.mean():.4f}; "
              + ", ".join(gaps))
    print("Planar point sets, 128 problems x 256 points, 1 px, float32, 512 samples:")
    for depth in (0.0, 0.01):
        case = make_problems(np.random.default_rng(10), 128, 256, noise_px=1.0, depth=depth)
        x3d, x2d, w2d, K, R, t = case_tensors(case, np.ones_like(case["x2d"]), torch.float32)
        alone = solve_pnp(x3d, x2d, K)
        err = np.degrees(rotation_error_rad(alone.R.double().numpy(), case["R"]))
        wrong = alone.valid.numpy() & (err > 20)
        with torch.no_grad():
            out = epro_pnp(x3d, x2d, w2d, K, R, t, generator=torch.Generator().manual_seed(13))
        gap = out.loss.numpy()[out.mask.numpy()] - laplace_losses(case, w2d.numpy())[out.mask.numpy()]
        cost = alone.cost.numpy()[wrong]
        print(f"  depth x {depth}: closed-form start alone: {wrong.sum()} valid minima > 20 deg "
              f"off" + (f" ({err[wrong].min():.0f}-{err[wrong].max():.0f} deg, cost "
                        f"{cost.min():.0f}-{cost.max():.0f})" if wrong.any() else "")
              + f"; both starts: {out.mask.sum()} of {len(wrong)} valid, loss - closed form "
              f"{gap.min():+.3f} to {gap.max():+.3f}")


def chunk_shapes() -> dict[str, tuple[int, int, int, int]]:
    """(batch, mc_samples, amis_iters, points) of the finetune stage in params.yaml and in the
    paper profile (pnp_points 0: all N_VERTS vertices)."""
    shapes = {}
    for name, params in (("params.yaml", load_params()), ("paper", profile_params("paper"))):
        cfg = params.finetune
        shapes[name] = (cfg.batch_size, cfg.mc_samples, cfg.amis_iters, cfg.pnp_points or N_VERTS)
    return shapes


def chunk_times(shape: tuple[int, int, int, int], chunks: list[int],
                repeats: int) -> dict[int, float]:
    """Best seconds of the eager float32 loss, forward + backward, per chunk size (poses), over
    `repeats` rounds that each run every chunk size once; the LM solution is given."""
    batch, samples, iters, points = shape
    leaves, K, R, t = loss_inputs(batch, points=points)
    solution = solve_sanitised(*(planar(x.detach()) for x in leaves), K, start=(R, t))
    best = dict.fromkeys(chunks, math.inf)
    for _ in range(repeats):
        for chunk in chunks:
            seconds, _ = best_time(lambda: run_loss(leaves, K, R, t, False, chunk, samples,
                                                    iters, solution), 1)
            best[chunk] = min(best[chunk], seconds)
    return best


def bench_chunks(repeats: int) -> None:
    reference = CPU_CHUNK_POSES
    chunks = sorted(set(CHUNK_CHOICES) | {reference})
    print(f"EPro-PnP loss (eager, float32), fwd + bwd, time at each chunk size (poses) / time at "
          f"{reference}:")
    for name, shape in chunk_shapes().items():
        times = chunk_times(shape, chunks, repeats)
        ratios = "  ".join(f"{c}: {times[c] / times[reference]:.2f}" for c in chunks)
        print(f"  finetune of {name}, {shape[0]} problems x {shape[1]} samples x {shape[3]} "
              f"points: {times[reference] * 1000:.0f} ms at {reference};  {ratios}")


def bare_opencv(case: dict, flags: str) -> None:
    """The cv2 calls of `flags` ('SQPNP', 'EPNP+ITERATIVE') on each problem, nothing else."""
    x3d, x2d, K = case["x3d"], case["x2d"], case["K"]
    method, refine = split_flags(flags)
    flag = opencv_flag(method)
    for i in range(len(x3d)):
        _, rvec, tvec = cv2.solvePnP(x3d[i], x2d[i], K, None, flags=flag)
        if refine:
            _, rvec, tvec = cv2.solvePnP(x3d[i], x2d[i], K, None, rvec, tvec, useExtrinsicGuess=True,
                                         flags=cv2.SOLVEPNP_ITERATIVE)
        cv2.Rodrigues(rvec)


def bench_gil(repeats: int) -> None:
    case = make_problems(np.random.default_rng(0), 256, N_VERTS, noise_px=1.5)
    camera, uv = challenge_camera(), case["x2d"]        # make_problems projects with this camera's K
    sigma = np.ones(uv.shape[:2])
    cv2.setNumThreads(1)
    print("OpenCV PnP as inference's threads run it (solve_poses, one thread) against the bare cv2 calls, "
          "microseconds a face:")
    for flags in ("EPNP+ITERATIVE", "SQPNP"):
        bare, project = float("inf"), float("inf")
        for _ in range(repeats):
            bare = min(bare, best_time(lambda: bare_opencv(case, flags), 1)[0])
            project = min(project, best_time(lambda: solve_poses("opencv", case["x3d"], uv, sigma, camera, flags), 1)[0])
        per = 1e6 / len(uv)
        print(f"  {flags}: bare {bare * per:.1f}, solve_poses {project * per:.1f} (ratio {project / bare:.3f}): "
              f"{(project - bare) * per:.1f} us a face of Python beside OpenCV's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--accuracy", action="store_true", help="the loss against its closed form only")
    parser.add_argument("--chunks", action="store_true", help="time sample-cost chunk sizes only")
    parser.add_argument("--gil", action="store_true", help="inference's OpenCV PnP against the bare cv2 calls only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads")
    if args.accuracy:
        bench_accuracy()
        return
    if args.chunks:
        bench_chunks(args.repeats)
        return
    if args.gil:
        bench_gil(max(args.repeats, 5))
        return
    bench_solve(args.repeats)
    bench_loss(args.repeats)
    if not args.skip_memory:
        bench_memory()


if __name__ == "__main__":
    main()
