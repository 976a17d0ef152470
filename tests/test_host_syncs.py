"""bench/host_syncs.py counts every kind of host sync once, and no pure tensor op; it puts torch.Tensor back."""
import importlib.util

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from conftest import REPO

spec = importlib.util.spec_from_file_location("host_syncs", REPO / "bench" / "host_syncs.py")
host_syncs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(host_syncs)

T = torch.arange(6.0).reshape(2, 3)
READS = {  # a read of tensor data, and what the counter calls it
    "tolist": (lambda: T.tolist(), "Tensor.tolist"),
    "item": (lambda: T[0, 1].item(), "Tensor.item"),
    "bool": (lambda: bool(T[0, 1]), "Tensor.__bool__"),
    "int": (lambda: int(T[0, 1]), "Tensor.__int__"),
    "float": (lambda: float(T[0, 1]), "Tensor.__float__"),
    "index": (lambda: [0, 1][T[0, 1].long()], "Tensor.__index__"),
    "cpu": (lambda: T.cpu(), "Tensor.cpu"),
    "numpy": (lambda: T.numpy(), "Tensor.numpy"),
    "nonzero": (lambda: T.nonzero(), "nonzero"),
    "torch.tensor": (lambda: torch.tensor([1, 2]), "lift_fresh"),
    "copy to another device": (lambda: T.to("meta"), "_to_copy cpu->meta"),  # the one other device a CPU has
}


@pytest.mark.parametrize("read", list(READS))
def test_each_host_read_counts_once(read):
    run, name = READS[read]
    with host_syncs.HostSyncCounter() as counter:
        run()
    assert counter.syncs == 1 and counter.sync_names == {name: 1}


def test_pure_tensor_ops_count_as_ops_only():
    with host_syncs.HostSyncCounter() as counter:
        (T + 1).sum(dim=0)
        T.to(torch.float64)  # a copy on the same device
    assert counter.ops == 3 and counter.syncs == 0  # add, sum, _to_copy


def test_reads_of_tensors_without_data_count_no_sync():
    fake = FakeTensorMode().from_tensor(T)
    with host_syncs.HostSyncCounter() as counter:
        fake.cpu()  # a shape, as torch.compile traces one
        with pytest.raises(NotImplementedError, match="no data"):
            torch.empty(2, device="meta").tolist()
    assert counter.ops > 0 and counter.syncs == 0


def test_the_tensor_methods_are_restored_even_after_an_error():
    before = {name: vars(torch.Tensor).get(name) for name in host_syncs.READS}
    with pytest.raises(RuntimeError), host_syncs.HostSyncCounter():
        raise RuntimeError("inside")
    assert {name: vars(torch.Tensor).get(name) for name in host_syncs.READS} == before
    assert torch.Tensor.tolist is torch._C.TensorBase.tolist and bool(torch.tensor(True))
