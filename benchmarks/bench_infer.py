"""Inference throughput (flip & merge + PnP) against half the bare backbone's (docs/benchmarks.md "Inference").

Reference (same process, channels and backbone input size, and the batch of the pipeline's
forward: 2 x infer.batch_size with flip & merge, which runs each batch with its mirror in one
forward): the torchvision ResNet trunk alone, forward only, on random tensors already on the
device; flip & merge runs two passes per image, so the target is half its rate (the whole rate
with --flip-merge none). Measured: stage infer's whole pipeline
(stages.nets.inference.predict_store) on a memory-mapped crop store in a temporary folder:
reading, one forward of the batch with its mirror, merge, unwarp, PnP in threads. The network
has random weights scaled so that its landmarks stay near a face's projection (PnP then works
as hard as on real predictions). Prints both throughputs and their ratio; on CUDA also the
inference's with infer.cuda_graph the other way (each batch's network pass replayed from a CUDA
graph, or run directly).

    python -m benchmarks.bench_infer [--params params.yaml] [--batches 8] [--repeats 3] [--pnp opencv|batched]
        [--phases]
--phases also prints the time of each step of inference per image (the main thread's, the reader
thread's and the post-processing thread's), and on CUDA the places where the host waited for the GPU.
Needs the data root's resources (camera, template mesh): dvc repro synth.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import numpy as np
import pandas as pd
import torch

from benchmarks.gpu_probe import format_syncs, host_syncs, sync
from stages.common import cuda_graph
from stages.common.cropstore import CropStoreWriter, stamp_run
from stages.common.params import load_params
from stages.common.precision import amp_dtype, autocast, memory_format, place_network
from stages.face.mesh import flip_permutation
from stages.face.warp import apply_warp, invert_warp, similarity
from stages.nets.backbone import build_backbone
from stages.nets import inference
from stages.nets.dataset import CropStore
from stages.nets.inference import InferSettings, predict_store
from stages.nets.model import FaceNet, NetConfig
from stages.wcpa.camera import rt_from_euler
from stages.wcpa.layout import load_resources

N_COMPONENTS = 40
FACE_DISTANCE_M = 0.53


@torch.no_grad()
def reference_rate(depth: int, channels: int, batch: int, size: int, steps: int, device: torch.device,
                   amp: bool) -> float:
    """Images per second of the bare backbone's forward on random tensors."""
    net, _ = build_backbone(depth, channels)
    place_network(net, device).eval()                       # as stage infer: channels_last on CUDA
    images = torch.randn(batch, channels, size, size, device=device).contiguous(memory_format=memory_format(device))
    for i in range(steps + 2):
        if i == 2:
            sync(device)
            start = time.perf_counter()
        with autocast(device, amp_dtype(device, amp)):      # as stage infer: stages.common.precision
            net(images)
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def face_crop_warp(template: np.ndarray, camera, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """A frontal face at the usual distance: its crop warp (2, 3) and crop landmarks (V, 2)."""
    pose = rt_from_euler(np.zeros(3), np.array([0.0, 0.0, -FACE_DISTANCE_M]))
    uv = camera.project(template, pose)
    low, high = uv.min(0), uv.max(0)
    scale = 0.8 * crop / (high - low).max()
    warp = similarity(0.0, scale, (low + high) / 2, np.array([crop / 2, crop / 2]))
    return warp, apply_warp(warp, uv)


def bench_model(config: NetConfig, template: np.ndarray, mean_uv: np.ndarray) -> FaceNet:
    """Random network whose outputs are a face: landmarks near mean_uv, meshes near the template."""
    torch.manual_seed(0)
    model = FaceNet(config)
    components = np.linalg.qr(np.random.default_rng(0).normal(size=(template.size, config.n_components)))[0].T
    model.shape.set_basis(template, components.reshape(config.n_components, -1, 3), np.full(config.n_components, 1e-3))
    model.landmarks.init_mean(torch.as_tensor(mean_uv))
    with torch.no_grad():
        for fc in (model.landmarks.mu, model.landmarks.sigma):
            fc.weight.mul_(0.01)
    return model.eval()


def write_store(folder: Path, n: int, crop: int, warp: np.ndarray) -> CropStore:
    """A finished crop store (the crop stage's writer and run stamp) of n random crops, all with
    the same warp."""
    table = pd.DataFrame({"subject_id": "0", "facial_action": "a", "img_id": [f"{i:05d}" for i in range(n)]})
    writer = CropStoreWriter(folder / "work", table, np.repeat(warp[None], n, 0), crop)
    writer.rows.values[:] = np.random.default_rng(1).integers(0, 256, writer.rows.values.shape, dtype=np.uint8)
    writer.write(np.arange(n))
    writer.finish(folder, np.zeros(n, dtype=bool), np.repeat(invert_warp(warp)[None], n, 0))
    shutil.rmtree(folder / "work")
    stamp_run([folder])
    return CropStore.open(folder)


def pipeline_rate(model, store, perm, camera, settings) -> float:
    """Images per second of predict_store over the whole store (after a one-batch warm-up)."""
    warm = replace(store, images=store.images[:settings.batch_size], inv_warps=store.inv_warps[:settings.batch_size])
    predict_store(model, warm, perm, camera, settings)
    sync(settings.device)
    start = time.perf_counter()
    predict_store(model, store, perm, camera, settings)
    sync(settings.device)
    return len(store) / (time.perf_counter() - start)


# inference's steps whose time --phases reports (stages.nets.inference); _read_batch runs in the
# reader thread, _prepared (batch_predictions and submit_poses in it) in the post-processing thread,
# the others in the main thread (_from_host waits for the GPU, _finished for _prepared and the PnP)
PHASES = ("_read_batch", "_batch_warps", "_device_outputs", "_from_host", "_prepared", "batch_predictions",
          "submit_poses", "_finished")


def phase_times(model, store, perm, camera, settings) -> dict[str, float]:
    """Seconds spent in each of PHASES, in the network's forward call (its launch, on a GPU) and
    in the replays of its pass from CUDA graphs ('replayed': infer.cuda_graph) over one pass of
    predict_store, and the pass's wall time ('wall')."""
    totals = collections.Counter()

    def timed(name, fn):
        def call(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                totals[name] += time.perf_counter() - start
        return call

    patches = [mock.patch.object(inference, name, timed(name, getattr(inference, name))) for name in PHASES]
    patches.append(mock.patch.object(model, "forward", timed("forward", model.forward)))
    patches.append(mock.patch.object(cuda_graph, "replayed", timed("replayed", cuda_graph.replayed)))
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        start = time.perf_counter()
        predict_store(model, store, perm, camera, settings)
        sync(settings.device)
        totals["wall"] = time.perf_counter() - start
    return dict(totals)


def report_phases(model, store, perm, camera, settings) -> None:
    """Print phase_times per image and the places where one pass waits for the GPU."""
    times = phase_times(model, store, perm, camera, settings)
    n = len(store)
    print(f"phases over {n} images ({n / times['wall']:.1f} img/s), microseconds per image:")
    for name in ("forward", "replayed", *PHASES):
        print(f"  {name:18s} {times.get(name, 0.0) / n * 1e6:8.1f}")
    print(f"  {'wall':18s} {times['wall'] / n * 1e6:8.1f}")
    syncs = host_syncs(lambda: predict_store(model, store, perm, camera, settings), settings.device)
    print(f"host syncs in one pass: {format_syncs(syncs)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--batches", type=int, default=32,
                        help="batches per run: enough that the last batch's PnP (not overlapped) is a small part")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each; medians are compared")
    parser.add_argument("--pnp", choices=["opencv", "batched"], help="default: infer.pnp")
    parser.add_argument("--flip-merge", choices=["none", "3d", "both"], help="default: infer.flip_merge")
    parser.add_argument("--phases", action="store_true",
                        help="also the time of each of inference's steps and the places where the host waits for the GPU")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = load_params(args.params)
    train, infer_cfg = params.train, params.infer
    settings = InferSettings.of(infer_cfg)
    settings = replace(settings, pnp=args.pnp or settings.pnp, flip_merge=args.flip_merge or settings.flip_merge)
    resources = load_resources(params.data.root)
    crop = params.crop.size
    config = NetConfig(depth=train.depth, coordconv=train.coordconv, shape_head=train.shape_head, crop_size=crop,
                       n_verts=resources.n_verts, n_components=N_COMPONENTS, input_size=train.input_size)
    warp, mean_uv = face_crop_warp(resources.template, resources.camera, crop)
    model = bench_model(config, resources.template, mean_uv)
    perm = flip_permutation(resources.template)
    size = train.input_size or crop
    channels = 5 if train.coordconv else 3
    print(f"ResNet{train.depth}, batch {settings.batch_size}, crops {crop}px, backbone input {size}px, "
          f"{channels} channels, V {resources.n_verts}, flip_merge {settings.flip_merge}, pnp {settings.pnp} "
          f"({settings.pnp_flags}), PnP threads {settings.workers}, torch threads {torch.get_num_threads()}, "
          f"device {settings.device}")
    variants = [settings]
    if settings.device.type == "cuda":           # infer.cuda_graph both ways
        variants.append(replace(settings, cuda_graph=not settings.cuda_graph))
    references, fulls = [], [[] for _ in variants]
    with tempfile.TemporaryDirectory() as tmp:
        store = write_store(Path(tmp) / "crops", settings.batch_size * args.batches, crop, warp)
        passes = 1 if settings.flip_merge == "none" else 2
        for _ in range(args.repeats):      # interleaved, so that all see the same machine load
            references.append(reference_rate(train.depth, channels, passes * settings.batch_size, size, args.batches,
                                             settings.device, settings.amp))
            for rates, variant in zip(fulls, variants):
                rates.append(pipeline_rate(model, store, perm, resources.camera, variant))
        for variant in variants if args.phases else []:
            print(f"cuda_graph {variant.cuda_graph}:")
            report_phases(model, store, perm, resources.camera, variant)
    report_rates(references, fulls, variants, passes)


def report_rates(references: list[float], fulls: list[list[float]], variants: list[InferSettings],
                 passes: int) -> None:
    """Prints the reference's and each variant's runs (img/s), their medians and the ratios to
    the reference's rate over the `passes` forwards an image takes."""
    reference = float(np.median(references)) / passes
    print(f"runs (img/s): reference {', '.join(f'{r:.1f}' for r in references)}; inference "
          + "; ".join(f"(cuda_graph {v.cuda_graph}) {', '.join(f'{r:.1f}' for r in rates)}"
                      for v, rates in zip(variants, fulls)) + "; medians below")
    print(f"reference (bare backbone forward, random tensors, batch {passes} x infer.batch_size): "
          f"{reference * passes:8.1f} img/s "
          f"(over {passes} pass{'es' if passes > 1 else ''}: {reference:.1f})")
    for variant, rates in zip(variants, fulls):
        full = float(np.median(rates))
        print(f"inference (read, {passes} pass{'es' if passes > 1 else ''}, merge, unwarp, PnP; cuda_graph "
              f"{variant.cuda_graph}): {full:8.1f} img/s, ratio inference / (reference / {passes}): "
              f"{full / reference:.3f}")


if __name__ == "__main__":
    main()
