"""FeatureCache on torchvision backbones inside a user's own LightningModule, and the silent mismatches it refuses.

Each equivalence test trains the same initial network twice for 3 steps (shuffle off, same seed): once live and
once on cached features, with ``LayerFreezer.freeze_all_but_head(<classifier>)``; the losses agree within 1e-5
relative and the cache starts at or above the network's last feature block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torchvision
from pytorch_lightning.callbacks import Callback
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset
from torchvision.transforms import v2

from bench.torchvision_sweep import EvalStochasticDepth
from lightning_dnn.callbacks import LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from tests.trainer_utils import quiet_trainer_kwargs

N, BATCH, CLASSES = 12, 4, 10  # 3 steps


class UserModule(pl.LightningModule):
    """What a user writes: ``self.net = resnet18(...)``, cross entropy on ``self.net(x)``, SGD on what trains."""

    def __init__(self, net: nn.Module, *, normalize: bool = False) -> None:
        super().__init__()
        self.net, self.normalize = net, normalize
        self.losses: list[float] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - 0.5) / 0.25) if self.normalize else self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.losses.append(loss.item())
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.05)


def images(size: int, n: int = N, seed: int = 1) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(
        torch.rand(n, 3, size, size, generator=gen), torch.randint(0, CLASSES, (n,), generator=gen)
    )


def fit(
    make: Callable[[], nn.Module],
    data: Dataset[Any],
    callbacks: list[Callback],
    tmp_path: Path,
    **module_kwargs: Any,
) -> UserModule:
    torch.manual_seed(0)
    model = UserModule(make(), **module_kwargs)
    trainer = pl.Trainer(**quiet_trainer_kwargs(tmp_path, max_epochs=1, callbacks=callbacks))
    trainer.fit(model, DataLoader(data, batch_size=BATCH))
    return model


def live_and_cached(
    make: Callable[[], nn.Module], head: str, size: int, tmp_path: Path, extra: tuple[Callback, ...] = ()
) -> tuple[list[float], list[float], str | None]:
    live = fit(make, images(size), [LayerFreezer.freeze_all_but_head(head), *extra], tmp_path)
    cache = FeatureCache()
    cached = fit(make, images(size), [LayerFreezer.freeze_all_but_head(head), *extra, cache], tmp_path)
    return live.losses, cached.losses, cache.current_boundary


@pytest.fixture(autouse=True)
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


M = torchvision.models
FAST = [
    pytest.param(lambda: M.resnet18(num_classes=CLASSES), "fc", 32, ("net.layer4",), id="resnet18"),
    pytest.param(
        lambda: M.mobilenet_v3_small(num_classes=CLASSES),
        "classifier",
        32,
        ("net.features",),
        id="mobilenet_v3_small",
    ),
    pytest.param(
        lambda: M.squeezenet1_1(num_classes=CLASSES), "classifier", 32, ("net.features",), id="squeezenet1_1"
    ),
]
MORE = [
    pytest.param(
        lambda: M.efficientnet_b0(num_classes=CLASSES),
        "classifier",
        32,
        ("net.features",),
        id="efficientnet_b0",
    ),
    pytest.param(
        lambda: M.densenet121(num_classes=CLASSES), "classifier", 32, ("net.features",), id="densenet121"
    ),
    pytest.param(
        lambda: M.convnext_tiny(num_classes=CLASSES), "classifier", 32, ("net.features",), id="convnext_tiny"
    ),
    pytest.param(lambda: M.swin_t(num_classes=CLASSES), "head", 32, ("net.norm",), id="swin_t"),
]


@pytest.mark.parametrize(
    ("make", "head", "size", "boundaries"),
    FAST + MORE,
)
def test_cached_training_equals_live_training(
    make: Callable[[], nn.Module], head: str, size: int, boundaries: tuple[str, ...], tmp_path: Path
) -> None:
    live, cached, boundary = live_and_cached(make, head, size, tmp_path, (EvalStochasticDepth(),))
    assert boundary in boundaries
    assert len(live) == len(cached) == N // BATCH
    torch.testing.assert_close(torch.tensor(cached), torch.tensor(live), rtol=1e-5, atol=0)


def test_a_vision_transformer_is_refused_with_the_reason(tmp_path: Path) -> None:
    # VisionTransformer reshapes conv_proj's output and prepends the class token in its forward (not modules)
    with pytest.raises(ValueError, match=r"layers after net\.encoder cannot run on its output"):
        fit(
            lambda: M.vit_b_32(num_classes=CLASSES, image_size=32),
            images(32, n=8),
            [LayerFreezer.freeze_all_but_head("heads"), FeatureCache()],
            tmp_path,
        )


@pytest.mark.parametrize("boundary", ["layer4", "avgpool"])
def test_an_explicit_boundary_above_residual_blocks_is_accepted(boundary: str, tmp_path: Path) -> None:
    cache = FeatureCache(boundary)
    fit(
        lambda: M.resnet18(num_classes=CLASSES),
        images(32, n=8),
        [LayerFreezer.freeze_all_but_head("fc"), cache],
        tmp_path,
    )
    assert cache.current_boundary == f"net.{boundary}"


def test_preprocessing_in_the_lightning_module_forward_is_refused(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"UserModule.forward changes the inputs before calling net.*\(x - mean\)"
    ):
        fit(
            lambda: M.resnet18(num_classes=CLASSES),
            images(32, n=8),
            [LayerFreezer.freeze_all_but_head("fc"), FeatureCache()],
            tmp_path,
            normalize=True,
        )


class FreezeByHand(Callback):
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for name, p in pl_module.named_parameters():
            p.requires_grad_(name.startswith("net.fc."))


def test_a_trunk_frozen_by_hand_with_batch_norm_in_training_mode_is_refused(tmp_path: Path) -> None:
    def make() -> nn.Module:
        return M.resnet18(num_classes=CLASSES)

    with pytest.raises(
        ValueError,
        match=r"training mode: net\.bn1, net\.layer1\.0\.bn1.*LayerFreezer.*train_mode_trunk='allow'",
    ):
        fit(make, images(32, n=8), [FreezeByHand(), FeatureCache()], tmp_path)
    cache = FeatureCache(train_mode_trunk="allow")
    with pytest.warns(UserWarning, match="train_mode_trunk='allow'"):
        fit(make, images(32, n=8), [FreezeByHand(), cache], tmp_path)
    assert cache.current_boundary == "net.layer4"


def test_train_mode_trunk_is_validated() -> None:
    with pytest.raises(ValueError, match="train_mode_trunk"):
        FeatureCache(train_mode_trunk="sometimes")  # type: ignore[arg-type]


class Holder(Dataset[tuple[Tensor, Tensor]]):
    """A user dataset holding its augmentation under another name than ``transform``."""

    def __init__(self, base: TensorDataset, t: Any) -> None:
        self.base, self.t = base, t

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        x, y = self.base[i]
        return self.t(x), y


class Wrapper(Dataset[tuple[Tensor, Tensor]]):
    def __init__(self, dataset: Dataset[tuple[Tensor, Tensor]]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.dataset[i]


def jitter(x: Tensor) -> Tensor:
    return x + 0.1 * torch.randn_like(x)


AUGMENTED = {
    "v2 under another attribute": lambda b: Holder(b, v2.Compose([v2.RandomCrop(32, padding=2)])),
    "nested v1 Compose": lambda b: Holder(
        b,
        torchvision.transforms.Compose(
            [torchvision.transforms.Compose([torchvision.transforms.RandomHorizontalFlip()])]
        ),
    ),
    "a function calling torch": lambda b: Holder(b, jitter),
    "a lambda around a transform": lambda b: Holder(b, (lambda t: lambda x: t(x))(v2.RandomErasing())),
    "inside Subset": lambda b: Subset(Holder(b, v2.ColorJitter(0.5)), range(8)),
    "inside a user wrapper": lambda b: Wrapper(Holder(b, v2.RandomHorizontalFlip())),
}


@pytest.mark.parametrize("make_data", list(AUGMENTED.values()), ids=list(AUGMENTED))
def test_random_augmentation_anywhere_in_the_dataset_is_refused_without_views(
    make_data: Callable[[TensorDataset], Dataset[Any]], tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"random augmentation.*views=K"):
        fit(
            lambda: M.squeezenet1_1(num_classes=CLASSES),
            make_data(images(32, n=8)),
            [LayerFreezer.freeze_all_but_head("classifier"), FeatureCache()],
            tmp_path,
        )


def test_a_deterministic_transform_held_anywhere_is_cached(tmp_path: Path) -> None:
    cache = FeatureCache()
    fit(
        lambda: M.squeezenet1_1(num_classes=CLASSES),
        Wrapper(Holder(images(32, n=8), v2.Compose([v2.Normalize([0.5] * 3, [0.25] * 3)]))),
        [LayerFreezer.freeze_all_but_head("classifier"), cache],
        tmp_path,
    )
    assert cache.current_boundary == "net.features"


class SharedNorm(nn.Module):
    """``norm`` (frozen, with weights) runs after the frozen ``hidden1`` and again in the head, after ``hidden2``."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden1, self.norm, self.hidden2, self.fc = (
            nn.Linear(6, 8),
            nn.LayerNorm(8),
            nn.Linear(8, 8),
            nn.Linear(8, 10),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(self.hidden2(self.norm(self.hidden1(x.flatten(1))))))


def test_a_module_shared_by_trunk_and_head_stays_with_the_head(tmp_path: Path) -> None:
    data = TensorDataset(torch.randn(N, 6), torch.randint(0, CLASSES, (N,)))
    live = fit(SharedNorm, data, [LayerFreezer("hidden1|norm")], tmp_path)
    cache = FeatureCache()
    cached = fit(SharedNorm, data, [LayerFreezer("hidden1|norm"), cache], tmp_path)
    assert cache.current_boundary == "net.hidden1"  # not net.norm: its second call belongs to the head
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(live.losses), rtol=1e-5, atol=0)


def test_stochastic_depth_in_a_frozen_trunk_is_refused_until_it_is_in_eval_mode(tmp_path: Path) -> None:
    def make() -> nn.Module:
        body = nn.Sequential(nn.Linear(6, 8), torchvision.ops.StochasticDepth(0.5, "row"), nn.Linear(8, 8))
        return nn.Sequential(OrderedDict(body=body, fc=nn.Linear(8, CLASSES)))

    data = TensorDataset(torch.randn(N, 6), torch.randint(0, CLASSES, (N,)))
    with pytest.raises(ValueError, match=r"training mode: net\.body\.1\. .*\.eval\(\)"):
        fit(make, data, [LayerFreezer("body"), FeatureCache()], tmp_path)
    live = fit(make, data, [LayerFreezer("body"), EvalStochasticDepth()], tmp_path)
    cache = FeatureCache()
    cached = fit(make, data, [LayerFreezer("body"), EvalStochasticDepth(), cache], tmp_path)
    assert cache.current_boundary == "net.body"
    torch.testing.assert_close(torch.tensor(cached.losses), torch.tensor(live.losses), rtol=1e-5, atol=0)
