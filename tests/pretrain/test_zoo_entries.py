"""The two pretraining zoo entries: built from their recipes, reused by the selection rule, features that separate.

The published network is the encoder (the decoder and the pair head are not published), so the stored metrics
(reconstruction MSE, pair accuracy) are those of the build; here the published encoders are checked for what a
reuser needs: ``hidden[1-3]`` loads exactly, and the hidden3 features of the siamese encoder tell same-class test
pairs of its classes (0-4) from different-class ones better than a random encoder's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from lightning_dnn.data import FashionMNISTDataModule
from lightning_dnn.hub import load_pretrained, load_zoo_index
from lightning_dnn.nn import MLP
from lightning_dnn.pretrain import sample_pairs

ROOT = Path(__file__).resolve().parents[2]
ENTRIES = load_zoo_index(ROOT / "zoo" / "index.json")
AUTOENCODER, SIAMESE = "fashion-autoencoder-5x100-elu", "fashion-siamese-5x100-elu"
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.parametrize("name", [AUTOENCODER, SIAMESE])
def test_entry_is_built_from_its_pretraining_recipe(name: str) -> None:
    folder = ROOT / "zoo" / name
    recipe = yaml.safe_load((folder / "recipe.yaml").read_text())
    expected = "Autoencoder" if name == AUTOENCODER else "SiamesePretrainer"
    assert recipe["model"]["class_path"] == f"lightning_dnn.pretrain.{expected}"
    config = json.loads((folder / "config.json").read_text())
    assert config["architecture"] == "MLP" and config["config"]["hidden"] == [100] * 5
    assert config["config"]["activation"] == "elu" and config["config"]["init"] == "he_normal"
    metrics = ENTRIES[name].metrics
    if name == AUTOENCODER:
        assert set(metrics) == {"test_loss", "test_mse"}  # all 60k images trained on: no validation split
        assert metrics["test_mse"] == metrics["test_loss"] < 0.02
    else:
        assert set(metrics) == {"test_loss", "test_accuracy", "val_loss", "val_accuracy"}
        assert metrics["test_accuracy"] > 0.85  # balanced pairs of classes 0-4: chance is 0.5


@pytest.mark.parametrize("name", [AUTOENCODER, SIAMESE])
def test_hidden_1_to_3_are_reused_by_the_selection_rule(name: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    target = MLP(784, [100] * 5, 5)
    fresh = {k: v.clone() for k, v in target.state_dict().items()}
    source, _ = load_pretrained(f"zoo:{name}", endpoint="http://127.0.0.1:9", cache_dir=tmp_path / "cache")
    _, report = load_pretrained(
        f"zoo:{name}", include="hidden[1-3]", into=target, endpoint="http://127.0.0.1:9", cache_dir=tmp_path
    )
    assert report.ok
    for key, value in target.state_dict().items():
        reused = key.split(".")[0] in ("hidden1", "hidden2", "hidden3")
        assert torch.equal(value, source.state_dict()[key] if reused else fresh[key]), key


def _pair_auc(net: MLP, x: torch.Tensor, y: torch.Tensor) -> float:
    """The AUC of ``-|h1 - h2|`` for "same class" on 2,000 balanced test pairs (features: hidden3)."""
    i, j, same = sample_pairs(y, 2000, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        h = net.hidden3(net.hidden2(net.hidden1(x)))
    distance = (h[i] - h[j]).norm(dim=1)
    pos, neg = distance[same == 1], distance[same == 0]
    return float((pos[:, None] < neg[None, :]).float().mean())


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="Fashion-MNIST is not installed")
def test_siamese_features_separate_same_class_test_pairs(tmp_path: Path) -> None:
    data = FashionMNISTDataModule(
        root=str(FASHION_ROOT), download=False, classes=[0, 1, 2, 3, 4]
    )  # its pairs'
    data.setup("test")
    x, y = data.tensors("test")
    net, _ = load_pretrained(f"zoo:{SIAMESE}", endpoint="http://127.0.0.1:9", cache_dir=tmp_path)
    torch.manual_seed(0)
    random = _pair_auc(MLP(784, [100] * 5, 10), x, y)  # distances of random features: measured 0.77
    assert _pair_auc(net, x, y) > max(0.85, random + 0.08)  # type: ignore[arg-type]  # measured 0.90
