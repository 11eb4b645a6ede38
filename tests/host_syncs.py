"""Counting the operators that would make a GPU wait for the host, on any device."""
import torch


class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the operators that make a GPU wait for the host: reading a value (item, bool of a
    tensor) and nonzero (boolean indexing)."""

    SYNCS = ("aten._local_scalar_dense.default", "aten.nonzero.default")

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += str(func) in self.SYNCS
        return func(*args, **(kwargs or {}))
