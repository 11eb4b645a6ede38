"""Resumable training state, one format for every trainer (coarse_train, train, finetune).

A run keeps one file per finished epoch, <folder>/epoch_<NNN>.pt (NNN the 0-based epoch it
ends), written atomically (stages.common.io.save_torch) and read as tensors and plain data only
(stages.common.io.load_torch). Each holds
  epoch        the 0-based index of the last finished epoch
  fingerprint  hash of everything the state's validity depends on (params, inputs' identity,
               network layout): a file of another fingerprint is never resumed
  modules      {name: state_dict} of the trained networks
  optimizer, scaler, scheduler (or None)   their state_dicts
  rng          torch's global generator states (CPU, and CUDA where present)
and whatever else the trainer adds (metric history, params, skipped inputs). The newest `keep`
files are kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path

import torch

from stages.common.distributed import Dist, same_everywhere
from stages.common.io import UnsafeCheckpointError, load_torch, save_torch

log = logging.getLogger("resume")
STATE_KEYS = ("epoch", "fingerprint", "modules", "optimizer", "scaler", "scheduler", "rng")


def fingerprint(content) -> str:
    """16 hex digits of the SHA-256 of `content` (JSON-able) as key-sorted JSON."""
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


def rng_state() -> dict:
    """torch's global generator states: cpu (a uint8 tensor) and cuda (one per device, or none)."""
    return {"cpu": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng(state: dict) -> None:
    """Set the generators of rng_state (the CUDA ones only where the device count matches)."""
    torch.set_rng_state(state["cpu"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def interned(value):
    """`value` with every str in it (dict keys and values, list and tuple items) interned. Pickle
    writes each string object once and refers back to it after, so equal states give equal
    bytes only when their equal strings are one object: a resumed optimiser's group keys come
    from the loaded file, a fresh one's from the code."""
    if isinstance(value, str):
        return sys.intern(value)
    if isinstance(value, dict):              # a state_dict's OrderedDict stays one, with its _metadata
        copy = type(value)((interned(key), interned(item)) for key, item in value.items())
        if hasattr(value, "_metadata"):
            copy._metadata = interned(value._metadata)
        return copy
    if isinstance(value, (list, tuple)):
        return type(value)(interned(item) for item in value)
    return value


def capture(epoch: int, modules: dict[str, torch.nn.Module], optimizer, scaler, scheduler=None) -> dict:
    """The resumable state (STATE_KEYS less the fingerprint) after 0-based epoch `epoch`."""
    return {"epoch": epoch, "modules": {name: module.state_dict() for name, module in modules.items()},
            "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None, "rng": rng_state()}


def restore(state: dict, modules: dict[str, torch.nn.Module], optimizer, scaler, scheduler=None) -> int:
    """Load a captured state into the objects -> the 0-based epoch to continue with. A scaler
    state saved by a disabled GradScaler (empty: a run on the CPU, or under bfloat16) leaves an
    enabled one (float16 on a GPU before Ampere) at its initial scale."""
    for name, module in modules.items():
        module.load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    if state["scaler"]:
        scaler.load_state_dict(state["scaler"])
    if scheduler is not None:
        scheduler.load_state_dict(state["scheduler"])
    restore_rng(state["rng"])
    return int(state["epoch"]) + 1


class Checkpoints:
    """The epoch files of one run in `folder`, all of fingerprint `fp`; the newest `keep` are kept."""

    def __init__(self, folder: Path, fp: str, keep: int = 2):
        self.folder, self.fp, self.keep = Path(folder), fp, keep

    def save(self, state: dict) -> None:
        """epoch_<NNN>.pt of state (capture's keys and the trainer's own), atomically; of the
        other epoch files the newest keep - 1 stay (never the one just written goes, even when a
        file of another run has a later epoch)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"epoch_{state['epoch']:03d}.pt"
        save_torch(interned({**state, "fingerprint": self.fp}), path)
        others = sorted(p for p in self.folder.glob("epoch_*.pt") if p != path)
        for old in others[:max(len(others) - (self.keep - 1), 0)]:
            old.unlink()

    def latest(self, epochs: int) -> dict | None:
        """The newest state of this fingerprint with at most `epochs` epochs done (a run asked for
        fewer epochs than a file has must not end there), or None. A file that is not tensors and
        plain data, or lacks a key of STATE_KEYS, is ignored with a warning; the fingerprint is
        compared before any other content is used."""
        for path in sorted(self.folder.glob("epoch_*.pt"), reverse=True):
            state = self._read(path)
            if state is None:
                continue
            if state["epoch"] + 1 > epochs:
                log.warning("%s has %d epochs done, more than the %d asked for: ignored", path, state["epoch"] + 1, epochs)
                continue
            log.info("resuming from %s (%d epochs done)", path, state["epoch"] + 1)
            return state
        return None

    def agree(self, epoch: int, ctx: Dist) -> None:
        """Stop every process unless all of them start from the same 0-based `epoch` (0: from
        scratch): one that could not read the checkpoint the others read would wait in their
        collectives until the timeout (same_everywhere)."""
        same_everywhere(epoch, ctx, f"the epochs done in {self.folder} (a process that could not read the "
                        "checkpoint the others resume from?)")

    def _read(self, path: Path) -> dict | None:
        """The state in `path` when it is this run's and complete, else None (with a warning)."""
        try:
            state = load_torch(path)
        except UnsafeCheckpointError as err:
            log.warning("%s: ignored", err)
            return None
        if not isinstance(state, dict) or state.get("fingerprint") != self.fp:
            log.warning("%s was written with other params or inputs: ignored", path)
            return None
        missing = [key for key in STATE_KEYS if key not in state]
        if missing:
            log.warning("%s lacks %s (written by older code): ignored", path, ", ".join(missing))
            return None
        return state
