"""Inference of the two-branch network on a crop store (paper sec. 2.5): flip & merge, unwarp, PnP.

Per batch of crops (read from the memory-mapped store while the previous batch runs):
  1. one forward pass of the batch concatenated with its mirror (u -> S - u), on CUDA with AMP
     and channels_last when present (stages.common.precision); the mirrored outputs are mapped
     back on the device, and merged on the host (stages.nets.flipmerge);
  2. landmarks and sigma go from crop px to full-image px through the store's inv_warps;
  3. the pose comes from PnP between the landmarks and the predicted canonical mesh
     (stages.nets.poses), solved in a thread pool while the next batch runs through the network.
     Steps 2 and 3 (and step 1's merge) run on a post-processing thread, a batch behind the
     network: the main thread only feeds the GPU.
     A network with the direct 6DoF head (train.pose_head = direct6dof) gives the pose itself, in
     its frame (train.pose_frame): it is mapped to the camera (stages.nets.pose_frame) from the original crop's
     outputs (flip & merge applies to its mesh), its landmarks are the mesh projected with that
     pose and its sigma is NaN (it has none).

Skipped samples (the crop store's index.csv `skipped` = 1: no usable crop) get the fallback
prediction: the PCA mean mesh in the mean training pose (chordal mean rotation, mean translation
of artifacts/pca/poses_train.npy), its projection as landmarks and sigma NaN. Any other row
with a non-finite mesh or landmark stops the run with the rows named. Rows whose PnP fails (or puts the face behind the camera) keep their mesh and get
the fallback pose, up to infer.max_pnp_failures of the split; past that the run stops.
"""
from __future__ import annotations

import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import pandas as pd
import torch
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from stages.common.cropstore import release_rows
from stages.common.cuda_graph import graph_on, graphed
from stages.common.device import host_to_device, pick_device
from stages.common.params import InferParams
from stages.common.precision import amp_dtype, autocast, place_network
from stages.common.threads import single_thread_blas, thread_count
from stages.face.warp import apply_warp
from stages.nets.pose_frame import frame_poses
from stages.nets.dataset import CropStore
from stages.nets.flipmerge import check_mode, merge_outputs, unmirror_outputs
from stages.nets.model import FaceNet
from stages.nets.poses import check_pnp, submit_poses
from stages.wcpa.camera import Camera, make_rt
from stages.wcpa.layout import ID_COLUMNS, finite_rows, labelled_rows
from stages.wcpa.predictions import PredictionWriter
from stages.wcpa.submission import pose_accepted

log = logging.getLogger(__name__)
OUTPUT_KEYS = ("mu", "sigma", "verts")
POSE_KEYS = ("R_frame", "t_code")    # the direct 6DoF head's outputs


class InferenceError(RuntimeError):
    """The network or the PnP produced non-finite predictions for usable samples."""


@dataclass(frozen=True)
class InferSettings:
    """params infer.*: see stages/common/schema.py."""

    batch_size: int
    flip_merge: str     # none | 3d | both
    pnp: str            # opencv | batched
    pnp_flags: str      # OpenCV solvePnP method name (ITERATIVE, EPNP, SQPNP, ...)
    device: torch.device
    amp: bool
    workers: int        # PnP threads (infer.workers, `auto` resolved: stages.common.threads.thread_count)
    max_pnp_failures: float = 0.0   # fraction of usable rows whose PnP may fail (they get the fallback pose)
    cuda_graph: bool = False        # the network's pass replayed from a CUDA graph (CUDA only)

    @classmethod
    def of(cls, cfg: InferParams) -> "InferSettings":
        """From the infer params section (params.infer)."""
        device = pick_device(cfg.device, "infer.device")
        return cls(batch_size=cfg.batch_size, flip_merge=cfg.flip_merge, pnp=cfg.pnp, pnp_flags=cfg.pnp_flags,
                   device=device, amp=cfg.amp, workers=thread_count(cfg.workers),
                   max_pnp_failures=cfg.max_pnp_failures,
                   cuda_graph=graph_on(cfg.cuda_graph, device, "infer.cuda_graph"))


@dataclass(frozen=True)
class Fallback:
    """The prediction of a skipped sample: verts (V, 3) metres, R_t (4, 4)."""

    verts: np.ndarray
    R_t: np.ndarray


def mean_pose(poses: np.ndarray) -> np.ndarray:
    """Poses (N, 4, 4) -> their mean R_t (4, 4): chordal L2 mean rotation, mean translation.
    NaN rows (samples the pca stage skipped) are left out."""
    poses = np.asarray(poses, dtype=np.float64)
    poses = poses[labelled_rows(poses)]
    rotation = Rotation.from_matrix(poses[:, :3, :3]).mean().as_matrix()
    return make_rt(rotation, poses[:, 3, :3].mean(0))


def _device_outputs(out: dict[str, torch.Tensor], n: int, perm: torch.Tensor | None,
                    size: int) -> dict[str, torch.Tensor]:
    """A forward's outputs on the device -> float32 tensors: the n crops' own under their keys and,
    with perm (the batch carries the n mirrors after them), the mirrors' mapped back to the
    crops (stages.nets.flipmerge.unmirror_outputs, on the device) under 'back_<key>'."""
    plain = {key: out[key][:n].float() for key in OUTPUT_KEYS + POSE_KEYS if key in out}
    if perm is None:
        return plain
    back = unmirror_outputs({key: out[key][n:].float() for key in OUTPUT_KEYS}, perm, size)
    return {**plain, **{f"back_{key}": value for key, value in back.items()}}


class DevicePass:
    """The network's pass over a batch, on the device, as a function of tensors (what
    stages.common.cuda_graph captures): images (B, S, S, 3) uint8 and their warps (B, 2, 3), twice
    over with a mirror (`_batch_warps`) -> the values of `_device_outputs` (float32), in the order
    of `keys` (set by each call; the same for every call of a pass). Autocast without its cache of
    cast weights (`autocast`)."""

    def __init__(self, model: FaceNet, dtype: torch.dtype | None, perm: torch.Tensor | None, size: int):
        self.model, self.dtype, self.perm, self.size = model, dtype, perm, size
        self.keys: list[str] = []

    def __call__(self, images: torch.Tensor, warps: torch.Tensor) -> tuple[torch.Tensor, ...]:
        x = images.permute(0, 3, 1, 2).contiguous()         # NCHW, as in training
        if self.perm is not None:
            x = torch.cat([x, x.flip(-1)])
        with autocast(x.device, self.dtype, cache=False):
            out = self.model(x, inv_warps=warps)
        values = _device_outputs(out, len(images), self.perm, self.size)
        self.keys = list(values)
        return tuple(values.values())


_GRAPHED_PASS: dict[tuple, tuple[DevicePass, Callable]] = {}   # the last graphed pass (network_pass)


def network_pass(model: FaceNet, dtype: torch.dtype | None, perm: np.ndarray | None, size: int,
                 cuda_graph: bool) -> tuple[DevicePass, Callable]:
    """The pass of `model` (on its device) over crops of `size` px, mirrored with perm (V,) (None:
    no mirror) -> (the DevicePass, what runs it: itself, or with cuda_graph its replays from CUDA
    graphs). A graphed pass is kept for the next call with the same model, weights in the same
    memory, dtype, perm and size, so that its captures serve every batch of a process (predict
    calls once a batch of images); another one replaces it."""
    device = next(model.parameters()).device

    def new_pass() -> DevicePass:
        return DevicePass(model, dtype, None if perm is None else torch.as_tensor(perm).to(device), size)

    if not cuda_graph:
        device_pass = new_pass()
        return device_pass, device_pass
    weights = tuple(t.data_ptr() for t in (*model.parameters(), *model.buffers()))
    key = (id(model), weights, device, dtype, None if perm is None else np.asarray(perm).tobytes(), size)
    if key not in _GRAPHED_PASS:
        _GRAPHED_PASS.clear()
        device_pass = new_pass()
        _GRAPHED_PASS[key] = device_pass, graphed(device_pass, None, "the network's pass")
    return _GRAPHED_PASS[key]


def _to_host(out: dict[str, torch.Tensor], device: torch.device) -> tuple[dict[str, torch.Tensor], object]:
    """Queue the copy of tensors (`_device_outputs`) to the host behind the forward -> (host
    tensors, a CUDA event that marks the copies done; None on the CPU). On CUDA the copies go to
    pinned memory and do not wait: the host reads them after `_from_host` syncs."""
    if device.type != "cuda":
        return out, None
    host = {key: value.to("cpu", non_blocking=True) for key, value in out.items()}
    done = torch.cuda.Event()
    done.record()
    return host, done


def _from_host(host: dict[str, torch.Tensor], done, rows: slice) -> tuple[slice, dict, dict | None]:
    """(rows, plain, mirrored_back) of a batch whose outputs `_to_host` queued (see network_outputs)."""
    if done is not None:
        done.synchronize()
    plain = {key: value.numpy() for key, value in host.items() if not key.startswith("back_")}
    back = {key.removeprefix("back_"): value.numpy() for key, value in host.items() if key.startswith("back_")}
    return rows, plain, back or None


def _read_batch(images: np.ndarray, start: int, batch_size: int, pin: bool) -> torch.Tensor:
    """Crops [start, start + batch_size) of a (memory-mapped) store -> (B, S, S, 3) uint8 tensor
    (in pinned memory for a fast copy to the GPU when `pin`); the store's pages are released
    once copied, so that reading a whole store keeps the resident memory flat."""
    batch = np.array(images[start:start + batch_size])
    release_rows(images, np.array([start, start + len(batch) - 1]) if len(batch) else np.zeros(0, int))
    batch = torch.from_numpy(batch)
    return batch.pin_memory() if pin else batch


def _batch_warps(inv_warps: np.ndarray, rows: slice, mirrored: bool, device: torch.device) -> torch.Tensor:
    """The crop -> full-image warps (B, 2, 3) of a batch's rows on the device, twice over when the
    batch carries its mirrors (a mirrored crop keeps its crop's place in the image:
    stages.nets.pose_frame.mirror_pose); NaN (skipped rows) as 0, whose outputs are not used."""
    warps = torch.as_tensor(np.nan_to_num(np.asarray(inv_warps[rows], dtype=np.float32)))
    warps = torch.cat([warps, warps]) if mirrored else warps
    return host_to_device(warps, device)


@torch.no_grad()
def network_outputs(model: FaceNet, images: np.ndarray, inv_warps: np.ndarray, batch_size: int, device: torch.device,
                    amp: bool, perm: np.ndarray | None, cuda_graph: bool = False
                    ) -> Iterator[tuple[slice, dict, dict | None]]:
    """Run the network over crops (N, S, S, 3) uint8 (a memmap is read batch by batch) with their
    crop -> full-image warps inv_warps (N, 2, 3) (read by image CoordConv maps).

    Yields (rows, plain, mirrored_back): the outputs mu (B, V, 2) crop px, sigma (B, V) crop px,
    verts (B, V, 3) metres of the crops, and those of their mirrors mapped back to the original
    crops (None when perm is None: no mirror pass). With a mirror, each batch is one forward of
    2B images (the crops, then their mirrors), whose second half is mapped back on the device. On
    CUDA a batch's forward is queued before the batch before it is handed on, and nothing in the
    loop waits for the GPU but the copy of that batch's outputs, so the GPU computes while the
    caller post-processes. cuda_graph: each batch's pass (`DevicePass`) replayed from a CUDA graph,
    one launch where the network's forward launches hundreds of kernels (a capture per batch
    shape, kept for the next call: `network_pass`).
    """
    model = place_network(model, device).eval()
    device_pass, run = network_pass(model, amp_dtype(device, amp), perm, images.shape[2], cuda_graph)
    starts = list(range(0, len(images), batch_size))
    pin = device.type == "cuda"
    previous = None
    with ThreadPoolExecutor(1) as reader:
        pending = reader.submit(_read_batch, images, starts[0], batch_size, pin) if starts else None
        for i, start in enumerate(tqdm(starts, desc="infer", leave=False, disable=len(starts) < 10)):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(_read_batch, images, starts[i + 1], batch_size, pin)
            rows = slice(start, start + len(batch))
            values = run(batch.to(device, non_blocking=True), _batch_warps(inv_warps, rows, perm is not None, device))
            launched = (*_to_host(dict(zip(device_pass.keys, values)), device), rows)
            if previous is not None:        # the batch before, while this one runs on the GPU
                yield _from_host(*previous)
            previous = launched
        if previous is not None:
            yield _from_host(*previous)


def to_full_image(mu: np.ndarray, sigma: np.ndarray, inv_warps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Crop px -> full-image px: landmarks (B, V, 2) through inv_warps (B, 2, 3), sigma (B, V)
    scaled by each similarity's scale (NaN out for NaN warps)."""
    with np.errstate(invalid="ignore"):      # skipped rows have NaN warps
        scale = np.sqrt(np.abs(np.linalg.det(np.asarray(inv_warps, dtype=np.float64)[:, :, :2])))
    return apply_warp(inv_warps, mu), sigma * scale[:, None]


def batch_predictions(plain: dict, back: dict | None, inv_warps: np.ndarray,
                      mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merged outputs of a batch in full-image px -> verts (B, V, 3), landmarks (B, V, 2), sigma (B, V)."""
    merged = merge_outputs(plain, back if back is not None else plain, mode)
    uv, sigma = to_full_image(merged["mu"], merged["sigma"], inv_warps)
    return merged["verts"], uv, sigma


def skipped_rows(store: CropStore) -> np.ndarray:
    """(N,) bool: rows the crop stage skipped (index.csv `skipped` = 1)."""
    if "skipped" not in store.index.columns:
        return np.zeros(len(store), dtype=bool)
    return store.index["skipped"].astype(str).str.strip().isin(["1", "True", "true"]).to_numpy()


def fallback_rows(n: int, fallback: Fallback, camera: Camera) -> dict[str, np.ndarray]:
    """The prediction of n skipped rows: the fallback mesh, its projection in the fallback pose
    as landmarks, NaN sigma -> verts (n, V, 3), landmarks (n, V, 2), sigma (n, V)."""
    verts = np.broadcast_to(fallback.verts, (n,) + fallback.verts.shape)
    uv = camera.project(fallback.verts, fallback.R_t)
    return {"verts": verts, "landmarks": np.broadcast_to(uv, (n,) + uv.shape),
            "sigma": np.full((n, len(fallback.verts)), np.nan, np.float32)}


def check_network(finite: np.ndarray, skipped: np.ndarray, table: pd.DataFrame, where: str) -> None:
    """Stop when the network gave a usable row (finite (N,) bool False: a non-finite mesh or
    landmarks) non-finite outputs, naming up to 5 rows."""
    bad = ~finite & ~skipped
    if bad.any():
        raise InferenceError(f"{where}: the network gave non-finite outputs for {int(bad.sum())} sample(s): "
                             + _names(table, np.flatnonzero(bad)))


def repair_poses(R_t: np.ndarray, skipped: np.ndarray, fallback: Fallback, table: pd.DataFrame,
                 max_fraction: float, where: str) -> np.ndarray:
    """Rows of R_t (N, 4, 4) whose PnP failed (a pose the submission validator rejects:
    stages.wcpa.submission.pose_accepted: not finite, the face behind the camera or 10 m away)
    get the fallback pose, in place, and keep their predicted mesh.

    Returns (N,) bool of those rows; stops, naming them, when they are more than `max_fraction`
    of the usable rows (a broken network or a PnP method unfit for its landmarks)."""
    failed = ~pose_accepted(R_t) & ~skipped
    usable = max(int((~skipped).sum()), 1)
    if failed.sum() > max_fraction * usable:
        raise InferenceError(f"{where}: PnP failed or put the face behind the camera for {int(failed.sum())} of "
                             f"{usable} sample(s) (infer.max_pnp_failures={max_fraction}); another "
                             "infer.pnp_flags, e.g. EPNP or SQPNP, may solve them: " + _names(table, np.flatnonzero(failed)))
    if failed.any():
        R_t[failed] = fallback.R_t
        log.warning("%s: PnP failed for %d sample(s): they get the mean training pose (%s)", where,
                    int(failed.sum()), _names(table, np.flatnonzero(failed)))
    return failed


def _names(table: pd.DataFrame, rows: np.ndarray) -> str:
    """'subject/action/img (row i)' of up to 5 rows."""
    names = ["/".join(map(str, table.iloc[i][ID_COLUMNS])) + f" (row {i})" for i in rows[:5]]
    return ", ".join(names) + (", ..." if len(rows) > 5 else "")


def predict_store(model: FaceNet, store: CropStore, perm: np.ndarray | None, camera: Camera,
                  settings: InferSettings) -> dict[str, np.ndarray]:
    """verts (N, V, 3), R_t (N, 4, 4), landmarks (N, V, 2) full px, sigma (N, V) full px for a
    store's rows, in memory (skipped rows not filled: see `infer_split`)."""
    return predict_crops(model, store.images, store.inv_warps, perm, camera, settings)


def predicted_batches(model: FaceNet, images: np.ndarray, inv_warps: np.ndarray, perm: np.ndarray | None,
                      camera: Camera, settings: InferSettings) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
    """Crops (N, S, S, 3) uint8 (a memmap is read batch by batch) and their crop -> full-image
    warps (N, 2, 3) -> per batch, in order, (rows, {verts (B, V, 3) metres, landmarks (B, V, 2)
    full px, sigma (B, V) full px, R_t (B, 4, 4)}). The main thread only feeds the network: each
    batch's outputs go to one post-processing thread (flip-merge, unwarp, PnP submitted to the
    pool of `settings.workers` threads, float32 copies: `_prepared`) while the next batches go
    through the network, at most `settings.workers` + 1 batches in flight. numpy's BLAS gets one
    thread (stages.common.threads): the PnP threads and torch share the cores."""
    single_thread_blas()
    mode = check_mode(settings.flip_merge)
    check_pnp(settings.pnp, settings.pnp_flags)
    mirror = perm if mode != "none" else None
    pending: deque = deque()
    with ThreadPoolExecutor(max(1, settings.workers)) as solvers, ThreadPoolExecutor(1) as post:
        for rows, plain, back in network_outputs(model, images, inv_warps, settings.batch_size, settings.device,
                                                 settings.amp, mirror, settings.cuda_graph):
            pending.append((rows, post.submit(_prepared, solvers, plain, back, inv_warps[rows], mode, camera,
                                              images.shape[1], model.config.pose_frame, settings)))
            while len(pending) > max(1, settings.workers):
                yield _finished(*pending.popleft())
        while pending:
            yield _finished(*pending.popleft())


def _prepared(solvers: ThreadPoolExecutor, plain: dict, back: dict | None, inv_warps: np.ndarray, mode: str,
              camera: Camera, crop_size: int, pose_frame: str,
              settings: InferSettings) -> tuple[dict[str, np.ndarray], Callable[[], np.ndarray]]:
    """A batch's network outputs (`network_outputs`) -> ({verts, landmarks, sigma} float32, a function
    that waits for its poses R_t (B, 4, 4)), the PnP submitted to `solvers`. A network with the
    direct 6DoF head gives its poses itself (stages.nets.pose_frame): its landmarks are its mesh
    projected in them and its sigma NaN (it has no landmark head)."""
    verts, uv, sigma = batch_predictions(plain, back, inv_warps, mode)
    if "R_frame" in plain:
        R_t = frame_poses(plain["R_frame"], plain["t_code"], inv_warps, camera, crop_size, pose_frame)
        uv, sigma = camera.project(verts.astype(np.float32), R_t), np.full_like(sigma, np.nan)
        pose = lambda: R_t
    else:
        pose = submit_poses(solvers, settings.pnp, verts, uv, sigma, camera, settings.pnp_flags, settings.device)
    out = {key: value.astype(np.float32) for key, value in (("verts", verts), ("landmarks", uv), ("sigma", sigma))}
    return out, pose


def _finished(rows: slice, job: Future) -> tuple[slice, dict[str, np.ndarray]]:
    """A batch's outputs once `_prepared` (`job`) and its poses are done."""
    out, pose = job.result()
    return rows, {**out, "R_t": pose()}


def predict_crops(model: FaceNet, images: np.ndarray, inv_warps: np.ndarray, perm: np.ndarray | None,
                  camera: Camera, settings: InferSettings) -> dict[str, np.ndarray]:
    """`predicted_batches` gathered in memory: verts (N, V, 3), R_t (N, 4, 4), landmarks (N, V, 2),
    sigma (N, V) (for a batch of images; a whole split goes through `infer_split`)."""
    parts = [out for _, out in predicted_batches(model, images, inv_warps, perm, camera, settings)]
    if not parts:
        n_verts = model.config.n_verts
        return {"verts": np.zeros((0, n_verts, 3), np.float32), "R_t": np.zeros((0, 4, 4)),
                "landmarks": np.zeros((0, n_verts, 2), np.float32), "sigma": np.zeros((0, n_verts), np.float32)}
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def prediction_rows(n_verts: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """The arrays of infer's predictions file: name -> (row shape, dtype) (stages.wcpa.predictions)."""
    return {"verts": ((n_verts, 3), np.float32), "R_t": ((4, 4), np.float64),
            "landmarks": ((n_verts, 2), np.float32), "sigma": ((n_verts,), np.float32),
            "skipped": ((), bool), "pnp_failed": ((), bool)}


def infer_split(model: FaceNet, store: CropStore, table: pd.DataFrame, perm: np.ndarray | None, camera: Camera,
                settings: InferSettings, fallback: Fallback, where: str, out: PredictionWriter) -> dict[str, np.ndarray]:
    """Predict one split into a predictions writer (`prediction_rows`), batch by batch, skipped
    rows given the fallback prediction, the network's outputs and the poses checked. `where`
    names the run in errors. Returns the small per-row arrays: R_t (N, 4, 4), skipped (N,) bool,
    pnp_failed (N,) bool."""
    skipped = skipped_rows(store)
    R_t = np.full((len(store), 4, 4), np.nan)
    finite = np.ones(len(store), dtype=bool)
    for rows, batch in predicted_batches(model, store.images, store.inv_warps, perm, camera, settings):
        finite[rows] = finite_rows(batch["verts"]) & finite_rows(batch["landmarks"])
        R_t[rows] = batch.pop("R_t")
        out.write(rows.start, **batch)
    check_network(finite, skipped, table, where)
    out.write_rows(np.flatnonzero(skipped), **fallback_rows(int(skipped.sum()), fallback, camera))
    R_t[skipped] = fallback.R_t
    pnp_failed = repair_poses(R_t, skipped, fallback, table, settings.max_pnp_failures, where)
    if skipped.any():
        log.warning("%s: %d skipped sample(s) got the fallback prediction (PCA mean mesh, mean training pose)",
                    where, int(skipped.sum()))
    else:
        log.info("%s: no skipped samples", where)
    out.write(0, R_t=R_t, skipped=skipped, pnp_failed=pnp_failed)
    return {"R_t": R_t, "skipped": skipped, "pnp_failed": pnp_failed}
