"""DeviceBatchLoader and EpochSampler: permutations, epochs, sharding, resume, against plain references."""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils.data import DistributedSampler

from lightning_dnn.loading import DeviceBatchLoader, EpochSampler


def epoch_order(loader, epoch):
    loader.set_epoch(epoch)
    return torch.cat([batch[-1] for batch in loader])


def reference_shard(n, seed, epoch, rank, world_size):
    """The documented formula, written as a plain loop: randperm(seed mix), pad by wrapping, take every k-th."""
    generator = torch.Generator().manual_seed(EpochSampler.epoch_seed(seed, epoch))
    perm = torch.randperm(n, generator=generator).tolist()
    total = math.ceil(n / world_size) * world_size
    padded = [perm[i % n] for i in range(total)]
    return [padded[i] for i in range(rank, total, world_size)]


@pytest.mark.parametrize("n, batch_size", [(10, 3), (12, 4), (7, 10), (1, 1)])
def test_each_epoch_is_a_permutation(n, batch_size):
    loader = DeviceBatchLoader(torch.arange(n).float().unsqueeze(1), torch.arange(n), batch_size=batch_size)
    assert len(loader) == math.ceil(n / batch_size)
    for epoch in range(3):
        batches = list(loader)
        assert [len(b[1]) for b in batches[:-1]] == [batch_size] * (len(batches) - 1)
        seen = torch.cat([b[1] for b in batches])
        assert sorted(seen.tolist()) == list(range(n))  # every sample exactly once
        # x and y stay aligned
        torch.testing.assert_close(torch.cat([b[0] for b in batches]).squeeze(1), seen.float())
        assert seen.tolist() == reference_shard(n, 0, epoch, 0, 1)


def test_epochs_differ_and_instances_agree():
    y = torch.arange(100)
    a = DeviceBatchLoader(y, batch_size=16, seed=5)
    b = DeviceBatchLoader(y, batch_size=16, seed=5)
    orders = [torch.cat([t[0] for t in a]) for _ in range(3)]  # plain loop: epochs advance by themselves
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])
    for epoch in (2, 0, 1):  # set_epoch pins the order, in any sequence
        assert torch.equal(epoch_order(b, epoch), orders[epoch])
    other_seed = DeviceBatchLoader(y, batch_size=16, seed=6)
    assert not torch.equal(epoch_order(other_seed, 0), orders[0])
    # seed 1 epoch 0 is not seed 0 epoch 1 (unlike DistributedSampler's seed + epoch)
    assert not torch.equal(
        epoch_order(DeviceBatchLoader(y, batch_size=16, seed=1), 0),
        epoch_order(DeviceBatchLoader(y, batch_size=16, seed=0), 1),
    )


def test_set_epoch_after_iter_takes_effect():
    loader = DeviceBatchLoader(torch.arange(50), batch_size=50)
    iterator = iter(loader)  # Lightning creates the iterator before it calls set_epoch
    loader.sampler.set_epoch(4)
    assert next(iterator)[0].tolist() == reference_shard(50, 0, 4, 0, 1)


def test_no_shuffle_keeps_order():
    loader = DeviceBatchLoader(torch.arange(10), batch_size=4, shuffle=False)
    for _ in range(2):
        assert torch.cat([b[0] for b in loader]).tolist() == list(range(10))


@pytest.mark.parametrize("n, world_size", [(10, 2), (11, 2), (10, 3), (2, 4)])
def test_sharding_disjoint_equal_and_covering(n, world_size):
    shards = []
    for rank in range(world_size):
        loader = DeviceBatchLoader(torch.arange(n), batch_size=3, seed=2, rank=rank, world_size=world_size)
        shard = epoch_order(loader, 1).tolist()
        assert shard == reference_shard(n, 2, 1, rank, world_size)
        shards.append(shard)
    assert len({len(s) for s in shards}) == 1  # equal sizes: every rank runs the same number of steps
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # covering
    padding = math.ceil(n / world_size) * world_size - n
    assert len(flat) - len(set(flat)) == padding  # disjoint except the wrapped padding
    if padding == 0:
        assert all(set(a).isdisjoint(b) for i, a in enumerate(shards) for b in shards[i + 1 :])


@pytest.mark.parametrize("n, world_size", [(10, 2), (11, 3), (3, 5)])
def test_unshuffled_sharding_matches_distributed_sampler(n, world_size):
    for rank in range(world_size):
        ours = EpochSampler(n, shuffle=False, rank=rank, world_size=world_size)
        torch_sampler = DistributedSampler(range(n), num_replicas=world_size, rank=rank, shuffle=False)
        assert list(ours) == list(torch_sampler) and len(ours) == len(torch_sampler)


def test_drop_last():
    loader = DeviceBatchLoader(torch.arange(10), batch_size=4, drop_last=True)
    assert len(loader) == 2
    batches = list(loader)
    assert [len(b[0]) for b in batches] == [4, 4]
    assert len(set(torch.cat([b[0] for b in batches]).tolist())) == 8


def test_state_dict_resumes_mid_epoch():
    y = torch.arange(30)
    uninterrupted = DeviceBatchLoader(y, batch_size=4, seed=9)
    full = [[b[0].tolist() for b in uninterrupted] for _ in range(2)]

    first = DeviceBatchLoader(y, batch_size=4, seed=9)
    list(first)  # epoch 0
    iterator = iter(first)
    served = [next(iterator)[0].tolist() for _ in range(3)]  # epoch 1, three batches, then "crash"
    state = first.state_dict()
    assert state == {"epoch": 1, "batches_served": 3, "seed": 9}

    resumed = DeviceBatchLoader(y, batch_size=4, seed=9)
    resumed.load_state_dict(state)
    resumed.set_epoch(1)  # Lightning sets the epoch again after loading: no effect on the skip
    assert served + [b[0].tolist() for b in resumed] == full[1]
    # a state saved at the end of an epoch continues with the next epoch
    end = DeviceBatchLoader(y, batch_size=4, seed=9)
    end.load_state_dict({"epoch": 0, "batches_served": len(end)})
    assert [b[0].tolist() for b in end] == full[1]


def test_tensors_are_moved_once_to_the_device():
    x = torch.arange(6.0)
    loader = DeviceBatchLoader(x, batch_size=2, device="cpu")
    assert loader.tensors[0] is x  # already there: no copy
    meta = DeviceBatchLoader(x, batch_size=2, device="meta")
    assert meta.tensors[0].device.type == "meta"


@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((), dict(batch_size=2), ValueError, "at least one tensor"),
        (
            (torch.zeros(3), torch.zeros(4)),
            dict(batch_size=2),
            ValueError,
            r"same first dimension, got sizes \[3, 4\]",
        ),
        ((torch.zeros(0),), dict(batch_size=2), ValueError, "empty"),
        ((torch.tensor(1.0),), dict(batch_size=2), ValueError, "0-d"),
        (([1, 2],), dict(batch_size=2), TypeError, "must be a torch.Tensor"),
        ((torch.zeros(3),), dict(batch_size=0), ValueError, "`batch_size` must be >= 1"),
        ((torch.zeros(3),), dict(batch_size=1, rank=2, world_size=2), ValueError, "`rank` must be <= 1"),
        ((torch.zeros(3),), dict(batch_size=1, seed=-1), ValueError, "`seed` must be >= 0"),
    ],
)
def test_bad_arguments(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        DeviceBatchLoader(*args, **kwargs)
