"""The EPro-PnP layer's host work on its device path: `finetune.compile` against eager, in the
same process (issue 17: the finetune step at 0.8 of the train step on a GPU).

On a GPU the finetune step is bound by the host: the layer's forward and backward are many
small operators, each dispatched by the CPU (docs/benchmarks.md, "One GPU"). Here one pass
(stages.pnp.epro.epro_pnp forward, then backward of its loss and of eq. 5's pose) runs on
--batch synthetic faces (tests/unit/pnp_cases.py: --points points, 1 px noise) with --samples
Monte Carlo poses, at shapes small enough that dispatch sets the time. On the CPU the LM is
forced onto the device path (masked, as on a GPU). Printed for the eager and the compiled
layer: the top-level aten operators of one pass and its host syncs (torch.profiler: nonzero,
item), and the pass's wall time, best and median of --passes after two warm-up passes.
--floor adds the compiled pass at FLOOR_SHAPES: on a GPU, a pass that takes about as long at the
given shapes waits on the host's dispatch, not on the GPU's arithmetic. --kernels N adds, for
the compiled layer, where one pass waits for the GPU (CUDA's sync debug mode) and where it
spends its time (torch.profiler): the kernels launched, their summed time against the pass's
wall time (far below it when the pass waits on launches and on the gaps between small kernels
rather than on arithmetic) and the N operators of most time.

    python -m benchmarks.bench_layer [--batch 8] [--points 64] [--samples 64] [--passes 15] [--device auto]
                                     [--kernels 0] [--floor]
"""
from __future__ import annotations

import argparse
import statistics
import time
from functools import partial
from unittest import mock

import numpy as np
import torch

from benchmarks.bench_finetune import dispatches
from benchmarks.gpu_probe import format_syncs, host_syncs, profile_tables, sync
from stages.common.device import pick_device
from stages.finetuning.pnp_loss import masked_mean
from stages.pnp import api, solver
from stages.pnp.diffpose import pnp_loss
from stages.pnp.epro import epro_pnp
from tests.unit.pnp_cases import make_problems


FLOOR_SHAPES = (8, 64, 64)      # faces, points, samples of --floor's pass


def layer_pass(case: dict, device: torch.device, samples: int, compiled: bool):
    """A function running one forward and backward of the layer on `case` (float32)."""
    K = torch.tensor(case["K"], device=device)
    R, t = (torch.tensor(case[k], device=device) for k in ("R", "t"))
    generator = torch.Generator(device).manual_seed(0)

    def run(*_):
        x3d, x2d = (torch.tensor(case[k], dtype=torch.float32, device=device, requires_grad=True)
                    for k in ("x3d", "x2d"))
        out = epro_pnp(x3d, x2d, None, K, R, t, n_samples=samples, compiled=compiled,
                       generator=generator, max_iters=20)
        pose = pnp_loss(out.R, out.t, R.float(), t.float(), x3d.detach(), x3d)
        (masked_mean(out.loss, out.mask) + pose.mean()).backward()

    return run


def timed(run, device: torch.device, passes: int) -> tuple[float, float]:
    """Best and median wall time (ms) of `passes` calls of run, after two warm-up calls."""
    times = []
    for i in range(passes + 2):
        start = time.perf_counter()
        run()
        sync(device)
        if i >= 2:
            times.append(1000 * (time.perf_counter() - start))
    return min(times), statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--points", type=int, default=64)
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--passes", type=int, default=15)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--kernels", type=int, default=0, help="rows of the compiled pass's kernel table (0: none)")
    parser.add_argument("--floor", action="store_true",
                        help="also time the compiled pass at 8 faces x 64 points x 64 samples: near the given "
                             "shapes' time, the pass is bound by the host's dispatch")
    args = parser.parse_args()
    device = pick_device(args.device, "--device")
    case = make_problems(np.random.default_rng(0), args.batch, args.points, noise_px=1.0)
    print(f"{device}: {args.batch} faces x {args.points} points, {args.samples} samples; LM masked")
    rows = {}
    with mock.patch.object(api, "levenberg_marquardt", partial(solver.levenberg_marquardt, masked=True)):
        for compiled in (False, True):
            run = layer_pass(case, device, args.samples, compiled)
            best, median = timed(run, device, args.passes)
            operators, syncs = dispatches(run, None)
            rows[compiled] = best
            print(f"{'compiled' if compiled else 'eager':9s} {operators:6d} operators {syncs:4d} host syncs"
                  f"   {best:7.1f} ms a pass (median {median:.1f})")
        print(f"compiled / eager time: {rows[True] / rows[False]:.2f}")
        if args.floor:
            small = make_problems(np.random.default_rng(0), *FLOOR_SHAPES[:2], noise_px=1.0)
            best, median = timed(layer_pass(small, device, FLOOR_SHAPES[2], True), device, args.passes)
            print(f"compiled at {' x '.join(map(str, FLOOR_SHAPES))} (the host's dispatch, little arithmetic): "
                  f"{best:.1f} ms a pass (median {median:.1f}); at the shapes above / here: {rows[True] / best:.2f}")
        if args.kernels:
            print(f"host syncs of a compiled pass: {format_syncs(host_syncs(run, device))}")
            print(profile_tables(run, device, args.kernels))


if __name__ == "__main__":
    main()
