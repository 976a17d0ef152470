"""Count the aten ops a block of code dispatches and every time it makes the host wait for tensor data.

    with HostSyncCounter() as counter:
        model(ids)
    counter.ops, counter.syncs, counter.sync_names   # 317, 1, Counter({'Tensor.__bool__': 1})

A ``TorchDispatchMode`` sees the aten ops. Three kinds of host syncs are counted:

* the ops that read device data on the host: ``_local_scalar_dense`` (``.item()``), ``nonzero``,
  ``is_nonzero``, ``equal``, and ``lift_fresh`` (``torch.tensor(list)`` copies host data to the device);
* a copy between two devices (``_to_copy``, ``copy_``): on a GPU, ``.to("cpu")`` and ``.cpu()``; on a
  CPU-only machine there is none;
* the Python-level reads of tensor data, which on CPU may dispatch nothing (``.tolist()``, ``.cpu()``) or
  only ``detach`` (``.numpy()``): ``Tensor.tolist``, ``item``, ``cpu``, ``numpy``, ``__bool__``, ``__int__``,
  ``__float__`` and ``__index__`` are wrapped while the block runs, and restored after it.

A read counts once: the ops dispatched inside a wrapped read (``bool(t)`` dispatches ``_local_scalar_dense``)
count as ops, not as syncs again. The wrappers patch ``torch.Tensor`` itself, so reads in other threads
count too; reads of meta and fake tensors (shapes only, no data) do not.
"""
from __future__ import annotations

from collections import Counter
from functools import wraps

import torch
from torch._subclasses.fake_tensor import FakeTensor
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = ("_local_scalar_dense", "nonzero", "is_nonzero", "equal", "lift_fresh")
# Every .to() and .cpu() that copies reaches a dispatch mode as _to_copy: aten's `to` is decomposed before it.
COPY_OPS = ("_to_copy", "copy_")
READS = ("tolist", "item", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


class HostSyncCounter:
    """``ops``: aten ops dispatched in the block; ``syncs``: host syncs; ``sync_names``: what synced, and how often."""

    def __init__(self):
        self.ops = 0
        self.sync_names: Counter[str] = Counter()
        self._reading = 0  # depth of wrapped reads now running: their own ops are not syncs again
        self._mode = _OpCounter(self)
        self._saved: dict[str, object] = {}

    @property
    def syncs(self) -> int:
        return sum(self.sync_names.values())

    def __enter__(self) -> HostSyncCounter:
        try:
            for name in READS:
                self._saved[name] = vars(torch.Tensor).get(name)  # None: inherited from TensorBase
                setattr(torch.Tensor, name, self._wrap(name, getattr(torch.Tensor, name)))
        except BaseException:
            self._restore()
            raise
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._restore()

    def _restore(self) -> None:
        """Put back every method that ``__enter__`` wrapped."""
        for name, own in self._saved.items():
            if own is None:
                delattr(torch.Tensor, name)  # TensorBase's method shows through again
            else:
                setattr(torch.Tensor, name, own)
        self._saved.clear()

    def _wrap(self, name: str, read):
        @wraps(read)
        def counted(tensor, *args, **kwargs):
            if not self._reading and not _no_data(tensor):
                self.sync_names[f"Tensor.{name}"] += 1
            self._reading += 1
            try:
                return read(tensor, *args, **kwargs)
            finally:
                self._reading -= 1

        return counted

    def _dispatched(self, func, args, kwargs) -> None:
        """Count one aten op, and the host sync it is unless a wrapped read already counted it."""
        self.ops += 1
        if self._reading:
            return
        name = func.__name__.split(".")[0]
        if name in SYNC_OPS:
            self.sync_names[name] += 1
        elif name in COPY_OPS and (devices := _copy_devices(name, args, kwargs)):
            self.sync_names[f"{name} {devices[0]}->{devices[1]}"] += 1


class _OpCounter(TorchDispatchMode):
    """Hands every aten op to its counter, then runs it."""

    def __init__(self, counter: HostSyncCounter):
        super().__init__()
        self.counter = counter

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.counter._dispatched(func, args, kwargs)
        return func(*args, **kwargs)


def _copy_devices(name: str, args, kwargs) -> tuple[str, str] | None:
    """(source, destination) device types of a copy op that crosses devices, else None."""
    if name == "copy_":  # copy_(self, src): data moves from src into self
        source, dest = args[1].device, args[0].device
    else:  # _to_copy(self, *, device=None, ...): no device keeps the tensor's own
        source = args[0].device
        dest = kwargs.get("device") or source
    return (source.type, dest.type) if source.type != dest.type else None


def _no_data(tensor) -> bool:
    """A meta or fake tensor: it has a shape but no data to read."""
    return isinstance(tensor, FakeTensor) or tensor.device.type == "meta"
