"""Finetuning-step throughput against the train stage's step (docs/benchmarks.md "The finetune step on a GPU").

Reference (same process, same model, same batches): stages.nets.trainer.Trainer.train_step,
i.e. GNLL + VDC + WPDC without the PnP layer. Measured: the finetune stage's step
(FinetuneTrainer.train_step: the same plus the EPro-PnP terms with finetune.mc_samples,
amis_iters, lm_iters, pnp_points, pnp_dtype). Prints both throughputs (wall clock and CPU time)
and their ratio, the price of the PnP layer (on CUDA with finetune.compile also the step with
finetune.cuda_graph the other way: the layer replayed from CUDA graphs or run directly), and each
step's dispatches: the top-level aten operators it calls and its host syncs (nonzero, item),
counted by torch.profiler. On a GPU a step of small kernels is bound by their dispatch (several
microseconds each), and a host sync stops the queue: the counts, taken on any device (and on the
paths a GPU takes: the masked LM, its sample-cost chunks), say where a GPU step's time goes.

    python -m benchmarks.bench_finetune [--steps 6] [--params params.yaml] [--start artifacts/train/model.pt]
        [--crop artifacts/crop] [--set finetune.pnp_points=0 ...] [--profile]
--profile also lists the places where a step waits for the GPU (CUDA) and torch.profiler's tables.
Needs artifacts/train/model.pt, artifacts/crop, artifacts/pca and artifacts/split.
"""
from __future__ import annotations

import argparse
import logging
import time
from contextlib import contextmanager
from functools import partial
from itertools import islice
from pathlib import Path
from unittest import mock

import torch

from benchmarks.gpu_probe import format_syncs, host_syncs, profile_tables, sync
from stages.common.params import apply_overrides, load_params
from stages.finetuning.pnp_loss import pnp_layer
from stages.finetuning.trainer import FinetunePaths, FinetuneTrainer
from stages.nets.trainer import Trainer, TrainPaths
from stages.pnp import api, sample_cost, solver
from stages.wcpa.layout import load_resources


def step_rate(trainer: FinetuneTrainer, step, batches: list[dict]) -> tuple[float, float]:
    """Images per wall-clock second and per CPU second of `step` over the batches (after one
    warm-up batch)."""
    step(batches[0], 0, len(batches))
    sync(trainer.ctx.device)
    wall, cpu, images = time.perf_counter(), time.process_time(), 0
    for i, batch in enumerate(batches[1:], 1):
        step(batch, i, len(batches))
        images += len(batch["images"])
    sync(trainer.ctx.device)
    return images / (time.perf_counter() - wall), images / (time.process_time() - cpu)


SYNC_OPS = ("aten::nonzero", "aten::_local_scalar_dense")


def dispatches(step, batch: dict) -> tuple[int, int]:
    """(top-level aten operators, host syncs) of one call of step(batch, 1, 2)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(batch, 1, 2)
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top = sum(1 for e in events if e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    return top, sum(1 for e in events if e.name in SYNC_OPS)


@contextmanager
def as_on_a_gpu():
    """The PnP layer on the paths it takes off the CPU: the masked LM (no host check an iteration)
    and a GPU's sample-cost chunks (one chunk a call when compiled)."""
    def gpu_chunk(device, compiled=False):
        return sample_cost.COMPILED_DEVICE_CHUNK_POSES if compiled else sample_cost.DEVICE_CHUNK_POSES

    with mock.patch.object(api, "levenberg_marquardt", partial(solver.levenberg_marquardt, masked=True)), \
            mock.patch.object(sample_cost, "default_chunk", gpu_chunk):
        yield


def other_graph_rates(trainer: FinetuneTrainer, batches: list[dict], base_wall: float, cuda_graph: bool) -> None:
    """Prints the finetune step's rate with finetune.cuda_graph set to `cuda_graph` (the layer
    replayed from CUDA graphs or run directly; its warm-up batch captures) against the train
    step's base_wall; the trainer's own layer is back in place afterwards."""
    configured, trainer.layer = trainer.layer, pnp_layer(trainer.pnp, trainer.generator, cuda_graph)
    try:
        wall, _ = step_rate(trainer, trainer.train_step, batches)
    finally:
        trainer.layer = configured
    print(f"finetune step, cuda_graph {cuda_graph}: {wall:7.1f} img/s wall = {wall / base_wall:.2f} of the train step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--start", default="artifacts/train/model.pt")
    parser.add_argument("--crop", default="artifacts/crop")
    parser.add_argument("--set", nargs="*", default=[], help="section.key=value overrides")
    parser.add_argument("--profile", action="store_true",
                        help="also the places where a finetune step waits for the GPU and torch.profiler's tables of one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = apply_overrides(load_params(args.params), args.set)
    paths = FinetunePaths(start=Path(args.start), data=TrainPaths(
        crop=Path(args.crop), pca=Path("artifacts/pca"), split=Path("artifacts/split"), out=Path("/tmp/bench_finetune")))
    trainer = FinetuneTrainer(params, paths, load_resources(params.data.root).camera)
    batches = list(islice(trainer.loader, min(args.steps + 1, len(trainer.loader))))   # an epoch at most
    if len(batches) < 2:
        raise SystemExit(f"{len(trainer.loader)} batch(es) of {params.finetune.batch_size} in an epoch: the rates "
                         "need a warm-up batch and one timed batch (a smaller finetune.batch_size)")
    plain_terms = partial(Trainer.step_terms, trainer)    # the train stage's eq. 1-3 only
    base_wall, base_cpu = step_rate(trainer, lambda *a: trainer.train_step(*a, step_terms=plain_terms), batches)
    ft_wall, ft_cpu = step_rate(trainer, trainer.train_step, batches)
    cfg = params.finetune
    print(f"batch {len(batches[0]['images'])}, pnp_points {cfg.pnp_points}, mc_samples {cfg.mc_samples}, "
          f"{cfg.pnp_dtype}, device {trainer.ctx.device}, torch threads {torch.get_num_threads()}")
    print(f"train step (reference): {base_wall:7.1f} img/s wall, {base_cpu:7.1f} img/CPU-s")
    print(f"finetune step:          {ft_wall:7.1f} img/s wall, {ft_cpu:7.1f} img/CPU-s (cuda_graph {cfg.cuda_graph})")
    print(f"ratio finetune/train:   {ft_wall / base_wall:7.2f} wall, {ft_cpu / base_cpu:7.2f} CPU")
    if trainer.ctx.device.type == "cuda" and cfg.compile:
        other_graph_rates(trainer, batches, base_wall, not cfg.cuda_graph)
    for name, step in (("train", lambda *a: trainer.train_step(*a, step_terms=plain_terms)),
                       ("finetune", trainer.train_step)):
        ops, syncs = dispatches(step, batches[0])
        print(f"{name} step dispatches: {ops} aten operators, {syncs} host syncs")
    with as_on_a_gpu():
        trainer.train_step(batches[0], 1, 2)                     # compiles what the GPU's paths compile
        ops, syncs = dispatches(trainer.train_step, batches[0])
    print(f"finetune step dispatches on a GPU's paths (the masked LM, a GPU's sample-cost chunks): {ops} aten "
          f"operators, {syncs} host syncs")
    if args.profile:
        device = trainer.ctx.device
        print(f"finetune step waits for the GPU at {format_syncs(host_syncs(lambda: trainer.train_step(batches[1], 1, 2), device))}")
        print(profile_tables(lambda: trainer.train_step(batches[1], 1, 2), device))


if __name__ == "__main__":
    main()
