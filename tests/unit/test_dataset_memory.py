"""Rows of memory-mapped arrays read from their files (stages.common.cropstore.read_rows), and the
resident memory of the training batches and the validation pass: an epoch over a memory-mapped
crop store and label cache, or a prediction over the usable rows of a store, leaves the reading
process holding none of their pages, and reads the same values as the arrays in memory. A
pickled dataset (a loader process started by spawn or forkserver) carries its files' references,
not their data."""
import pickle
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.common.cropstore import read_rows
from stages.nets.dataset import TrainBatches
from stages.nets import validate
from stages.nets.validate import predict
from stages.wcpa.camera import Camera
from tests.tiny_project import PROJ, memory_store

CAMERA = Camera(PROJ, 800, 800)
SMAPS = Path("/proc/self/smaps")


def resident_kb(path: Path) -> int:
    """Resident kB of this process's mappings of the file `path` (/proc/self/smaps)."""
    total, inside = 0, False
    for line in SMAPS.read_text().splitlines():
        head = line.split()
        if len(head) >= 5 and "-" in head[0] and not head[0].endswith(":"):
            inside = line.rstrip().endswith(str(path))
        elif inside and head[0] == "Rss:":
            total += int(head[1])
    return total


def mapped(array: np.ndarray, path: Path) -> np.memmap:
    np.save(path, array)
    return np.load(path, mmap_mode="r")


@pytest.mark.skipif(not SMAPS.is_file(), reason="needs /proc/self/smaps (Linux)")
def test_an_epoch_over_mapped_crops_and_labels_keeps_one_batch_resident(tmp_path):
    n, size, batch = 384, 64, 32
    _, verts, poses, store, basis = memory_store(np.random.default_rng(3), n, size, CAMERA)
    coeffs = basis.project(verts).astype(np.float32)
    common = (CAMERA, basis, np.arange(verts.shape[1]), 0.5, 0.2, 0)
    in_memory = TrainBatches(store, verts, poses, *common, coeffs=coeffs)
    files = {name: tmp_path / f"{name}.npy" for name in ("images", "verts", "coeffs")}
    on_disk = TrainBatches(replace(store, images=mapped(store.images, files["images"])),
                           mapped(verts, files["verts"]), poses, *common, coeffs=mapped(coeffs, files["coeffs"]))
    order = np.random.default_rng(0).permutation(n)
    for start in range(0, n, batch):
        positions = list(order[start:start + batch])
        expected, got = in_memory[positions], on_disk[positions]
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
    assert store.images.nbytes > 8 * batch * store.images[0].nbytes           # the file is many batches
    assert resident_kb(files["images"]) * 1024 <= 2 * batch * store.images[0].nbytes
    assert resident_kb(files["verts"]) * 1024 <= 2 * batch * verts[0].nbytes + 8192
    assert resident_kb(files["coeffs"]) * 1024 <= 2 * batch * coeffs[0].nbytes + 8192


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
def test_read_rows_gives_the_indexed_rows_of_mapped_and_in_memory_arrays(tmp_path, dtype):
    array = np.random.default_rng(0).normal(0, 50, (40, 5, 3)).astype(dtype)
    on_disk = mapped(array, tmp_path / "a.npy")
    for rows in ([0], [39], [3, 4, 5, 9, 20, 21, 39], list(range(40)), []):
        rows = np.array(rows, dtype=np.int64)
        for source in (on_disk, array, on_disk[1:]):           # a slice of a mapping: indexed in place
            expected = source[rows[rows < len(source)]]
            got = read_rows(source, rows[rows < len(source)])
            assert got.dtype == dtype and got.flags.writeable
            np.testing.assert_array_equal(got, expected)


def test_read_rows_names_a_file_shorter_than_its_header(tmp_path):
    path = tmp_path / "cut.npy"
    on_disk = mapped(np.zeros((10, 64), np.float64), path)
    with open(path, "r+b") as file:
        file.truncate(path.stat().st_size - 64 * 8 * 3)
    with pytest.raises(ValueError, match="cut.npy: truncated .* at row 8"):
        read_rows(on_disk, np.array([2, 8]))
    with pytest.raises(IndexError, match="cut.npy: rows 2..10 of 10"):
        read_rows(on_disk, np.array([2, 10]))


class MeanColour(torch.nn.Module):
    """A stand-in network: each crop's mean colour and its warp's translation."""

    def forward(self, images: torch.Tensor, inv_warps: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"colour": images.float().mean((2, 3)), "shift": inv_warps[:, :, 2]}


@pytest.mark.skipif(not SMAPS.is_file(), reason="needs /proc/self/smaps (Linux)")
def test_prediction_over_a_mapped_stores_usable_rows_reads_them_batch_by_batch(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (300, 48, 48, 3), dtype=np.uint8)
    inv_warps = np.random.default_rng(2).normal(size=(300, 2, 3))
    rows = np.flatnonzero(np.random.default_rng(3).random(300) < 0.9)       # the rows not skipped
    on_disk = mapped(images, tmp_path / "images.npy")
    got = predict(MeanColour(), on_disk, inv_warps[rows], 32, torch.device("cpu"), rows=rows)
    expected = predict(MeanColour(), images[rows], inv_warps[rows], 32, torch.device("cpu"))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    np.testing.assert_allclose(got["colour"], images[rows].mean((1, 2)), rtol=1e-6)
    assert resident_kb(tmp_path / "images.npy") * 1024 <= 2 * 32 * images[0].nbytes


def test_prediction_reads_the_next_batch_while_the_network_runs(monkeypatch):
    """Each batch's forward waits until the next batch has been read: with the reads on the
    network's thread, one after the other, the first forward would wait in vain."""
    read, chunk = {}, validate._read_chunk

    def recorded(*args, **kwargs):
        out = chunk(*args, **kwargs)
        read.setdefault(args[3], threading.Event()).set()
        return out

    class WaitsForTheNextRead(MeanColour):
        def forward(self, images, inv_warps):
            start = self.calls * 32
            self.calls += 1
            if start + 32 < 100:
                assert read.setdefault(start + 32, threading.Event()).wait(10), f"batch at {start + 32} not read"
            return super().forward(images, inv_warps)

    monkeypatch.setattr(validate, "_read_chunk", recorded)
    images = np.random.default_rng(1).integers(0, 256, (100, 16, 16, 3), dtype=np.uint8)
    model = WaitsForTheNextRead()
    model.calls = 0
    got = predict(model, images, np.zeros((100, 2, 3)), 32, torch.device("cpu"))
    np.testing.assert_allclose(got["colour"], images.mean((1, 2)), rtol=1e-6)
    assert model.calls == 4


def test_a_pickled_dataset_carries_its_files_references_and_reads_the_same_batches(tmp_path):
    n, size = 64, 64
    _, verts, poses, store, basis = memory_store(np.random.default_rng(4), n, size, CAMERA)
    coeffs = basis.project(verts).astype(np.float32)
    on_disk = TrainBatches(replace(store, images=mapped(store.images, tmp_path / "images.npy")),
                           mapped(verts, tmp_path / "verts.npy"), poses, CAMERA, basis,
                           np.arange(verts.shape[1]), 0.5, 0.2, 0, coeffs=mapped(coeffs, tmp_path / "coeffs.npy"))
    sent = pickle.dumps(on_disk)
    assert len(sent) < store.images.nbytes / 10                  # not the crops themselves
    received = pickle.loads(sent)
    assert isinstance(received.store.images, np.memmap) and isinstance(received.verts, np.memmap)
    for positions in ([0, 5, 9, 40], list(range(n))):
        expected, got = on_disk[positions], received[positions]
        for key in expected:
            np.testing.assert_array_equal(got[key].numpy(), expected[key].numpy(), err_msg=key)
    in_memory = TrainBatches(store, verts, poses, CAMERA, basis, np.arange(verts.shape[1]), 0.5, 0.2, 0)
    assert pickle.loads(pickle.dumps(in_memory)).store.images.shape == store.images.shape
