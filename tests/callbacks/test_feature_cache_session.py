"""FeatureCache's per-fit session without a Trainer: its plans, fingerprints, storage and build decisions.

A single-process CPU runtime stands in for the Trainer; the session wraps a DeviceBatchLoader as a fit would,
and iterating the wrapped loader is an epoch. The features it serves are compared with the frozen layers run by
hand, and a forward hook counts the samples the trunk processes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_dnn.callbacks.feature_cache._session import CacheOptions, CacheSession
from lightning_dnn.loading import DeviceBatchLoader
from lightning_dnn.nn import MLP

N, D, C = 48, 12, 4


class LocalRuntime:
    """One CPU process, no Trainer: what a session needs from the training loop."""

    def __init__(self, root: Path) -> None:
        self.device = torch.device("cpu")
        self.world_size, self.global_rank, self.local_rank = 1, 0, 0
        self.epoch = 0
        self.precision = "32-true"
        self.root_dir = root
        self.datamodule: object | None = None

    def all_agree(self, flag: bool) -> bool:
        return flag

    def broadcast(self, obj: Any) -> Any:
        return obj

    def barrier(self, name: str) -> None:
        pass

    def all_gather(self, tensor: Tensor) -> Tensor:
        return tensor.unsqueeze(0)

    def prepare_batch(self, batch: Any) -> Any:
        return batch

    def precision_context(self) -> contextlib.AbstractContextManager[object]:
        return contextlib.nullcontext()


class Holder(nn.Module):
    """Any module holding the network as ``self.net`` (a LightningModule in a fit)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net


class Fixture:
    """A frozen-trunk MLP, its data (label = sample index) and a counter of the samples ``hidden1`` processes."""

    def __init__(self, frozen: tuple[str, ...] = ("hidden1", "hidden2"), seed: int = 0) -> None:
        torch.manual_seed(seed)
        self.net = MLP(D, (16, 16), C)
        for name in frozen:
            self.net.get_submodule(name).requires_grad_(False)
        self.holder = Holder(self.net)
        self.x, self.y = torch.randn(N, D), torch.arange(N)
        self.trunk_samples = 0
        self.net.hidden1.register_forward_hook(self._count)

    def _count(self, module: nn.Module, args: Any, output: Tensor) -> None:
        self.trunk_samples += len(output)

    def loader(self) -> DeviceBatchLoader:
        return DeviceBatchLoader(self.x, self.y, batch_size=16, seed=3)

    def session(self, root: Path, **options: Any) -> CacheSession:
        return CacheSession(LocalRuntime(root), self.holder, CacheOptions(**options))


def epochs(session: CacheSession, loader: DeviceBatchLoader, count: int) -> Iterator[list[Any]]:
    """Wrap ``loader`` as the fit would and run ``count`` epochs over it, with the trunk restored after each."""
    runtime = session.runtime
    assert isinstance(runtime, LocalRuntime)
    wrapped = session.wrap_train(loader, 0)
    for epoch in range(count):
        runtime.epoch = epoch
        yield list(wrapped)  # type: ignore[call-overload]
        session.run_trunk()


def test_serves_the_frozen_layers_output_once_computed_in_the_loader_order(tmp_path: Path) -> None:
    f = Fixture()
    with torch.no_grad():
        features = f.net.hidden2(f.net.hidden1(f.x))
        logits = f.net(f.x)
    f.trunk_samples = 0
    session = f.session(tmp_path, storage="device")
    reference = f.loader()
    for batches in epochs(session, f.loader(), 2):
        expected_order = [yb for _, yb in reference]
        assert [yb.tolist() for _, yb in batches] == [yb.tolist() for yb in expected_order]
        for fb, yb in batches:
            torch.testing.assert_close(fb, features[yb])
        session.resume_training()  # the trunk is skipped while cached batches are served
        torch.testing.assert_close(f.net(batches[0][0]), logits[batches[0][1]])
    assert f.trunk_samples == N  # one build, reused by the second epoch
    assert session.summary["boundary"] == "net.hidden2"
    assert session.summary["trunk"] == ["net.hidden1", "net.hidden2"]
    assert session.summary["storage"] == "device"
    session.close()
    torch.testing.assert_close(f.net(f.x), logits)  # the whole network runs again


def test_fingerprint_follows_the_frozen_weights_only(tmp_path: Path) -> None:
    f = Fixture()
    session = f.session(tmp_path, storage="device")
    run = epochs(session, f.loader(), 3)
    next(run)
    first = session.summary["fingerprint"]
    assert f.session(tmp_path).plan() == (None, False)  # a new session must trace the network first ...
    with torch.no_grad():
        f.net.output.linear.weight.mul_(2.0)  # a trainable weight: the cache stays valid
    next(run)
    assert (f.trunk_samples, session.summary["fingerprint"]) == (N, first)
    f.net.hidden1.linear.weight.data.mul_(0.5)  # a frozen weight, behind autograd's back: rebuild
    next(run)
    assert f.trunk_samples == 2 * N
    assert session.summary["fingerprint"] != first

    again = Fixture()  # ... and the same frozen weights give the same key
    same = again.session(tmp_path, storage="device")
    next(epochs(same, again.loader(), 1))
    assert same.summary["fingerprint"] == first


def test_unfreezing_moves_the_boundary_down_then_trains_live(tmp_path: Path) -> None:
    f = Fixture()
    session = f.session(tmp_path, storage="device")
    run = epochs(session, f.loader(), 3)
    next(run)
    assert session.plan()[0] is not None and session.summary["boundary"] == "net.hidden2"
    f.net.hidden2.requires_grad_(True)
    next(run)
    assert session.summary["boundary"] == "net.hidden1"
    assert f.trunk_samples == 2 * N  # a second build, of hidden1 alone
    f.net.hidden1.requires_grad_(True)
    batches = next(run)
    assert session.plan() == (None, True)
    assert session.summary["boundary"] is None
    xs, ys = torch.cat([xb for xb, _ in batches]), torch.cat([yb for _, yb in batches])
    assert torch.equal(xs, f.x[ys])  # the loader's own batches: the inputs
    assert f.trunk_samples == 2 * N  # the live epoch's trunk runs in the training step, not here


def test_explicit_boundary_needs_everything_below_it_frozen(tmp_path: Path) -> None:
    f = Fixture(frozen=("hidden1",))
    session = f.session(tmp_path, boundary="hidden2")
    assert session.boundary_name == "net.hidden2" and session.network_name == "net"
    with pytest.raises(
        ValueError,
        match=r"layers up to net\.hidden2 must be frozen.*parameters of the network: hidden2\.linear\.weight",
    ):
        next(epochs(session, f.loader(), 1))
    with pytest.raises(ValueError, match="must select exactly one module"):
        f.session(tmp_path, boundary="hidden[12]")


def test_nothing_frozen_is_known_without_a_trace_and_trains_live(tmp_path: Path) -> None:
    f = Fixture(frozen=())
    session = f.session(tmp_path)
    with pytest.warns(UserWarning, match="no parameter is frozen"):
        assert session.plan() == (None, True)
    batches = next(epochs(session, f.loader(), 1))
    assert session.summary["boundary"] is None and f.trunk_samples == 0
    assert torch.equal(batches[0][0], f.x[batches[0][1]])


def test_a_disk_entry_is_reused_by_a_later_session_without_a_forward_pass(tmp_path: Path) -> None:
    built = Fixture()
    session = built.session(tmp_path, storage="disk", cache_dir=tmp_path / "fc")
    expected = next(epochs(session, built.loader(), 1))
    session.close()
    assert built.trunk_samples == N

    reused = Fixture()
    later = reused.session(tmp_path, storage="disk", cache_dir=tmp_path / "fc")
    assert later.plan()[0] is not None  # the plan was remembered on disk: no trace needed
    batches = next(epochs(later, reused.loader(), 1))
    assert reused.trunk_samples == 0
    assert later.summary["storage"] == "disk"
    for (fa, ya), (fb, yb) in zip(expected, batches, strict=True):
        assert torch.equal(ya, yb) and torch.equal(fa, fb)
