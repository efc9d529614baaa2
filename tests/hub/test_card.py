"""The one model-card renderer: the layer names it shows come from the network, and every writer uses it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from huggingface_hub import CommitInfo, CommitOperationAdd, HfApi
from torch import nn

from lightning_dnn.hub import architectures, load_pretrained, push_to_hub, save_pretrained
from lightning_dnn.hub._card import include_pattern, render_model_card
from lightning_dnn.hub._io import read_config
from lightning_dnn.hub.architectures import lower_blocks, register_architecture
from lightning_dnn.nn import MLP, ConvNet


class StemBodyHead(nn.Module):
    """A registered architecture whose blocks have neither MLP's nor ConvNet's names."""

    def __init__(self, width: int = 4) -> None:
        super().__init__()
        self.width = width
        self.stem = nn.Linear(3, width)
        self.act = nn.ReLU()  # no parameters: not a block worth reusing
        self.body = nn.Linear(width, width)
        self.head = nn.Linear(width, 2)

    @property
    def config(self) -> dict[str, Any]:
        return {"width": self.width}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> StemBodyHead:
        return cls(**config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.act(self.stem(x))))


def _reuse_line(card: str) -> str:
    return next(line for line in card.splitlines() if "include=" in line)


def test_a_three_hidden_layer_mlp_card_names_hidden1_to_hidden3(tmp_path: Path) -> None:
    net = MLP(6, (5, 4, 3), 2)
    card = (save_pretrained(net, tmp_path) / "README.md").read_text()
    assert "(hidden1, hidden2, hidden3)" in card
    assert 'include="hidden[123]"' in _reuse_line(card)
    assert f"{sum(p.numel() for p in net.parameters()):,} parameters." in card
    # the example in the card does what it says: it loads exactly the three hidden blocks
    _, report = load_pretrained(tmp_path, include="hidden[123]", into=MLP(6, (5, 4, 3), 7))
    assert {name.split(".")[0] for name in report.loaded} == {"hidden1", "hidden2", "hidden3"}


def test_a_convnet_card_names_its_conv_blocks(tmp_path: Path) -> None:
    card = (save_pretrained(ConvNet(1, (4, 6, 8, 8), 3), tmp_path) / "README.md").read_text()
    assert "(conv1, conv2, conv3, conv4)" in card
    assert 'include="conv[1234]"' in _reuse_line(card)
    assert "hidden" not in card


def test_layer_names_come_from_the_network_not_from_a_list_of_known_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(architectures, "_REGISTRY", dict(architectures._REGISTRY))
    register_architecture("StemBodyHead", StemBodyHead)
    assert lower_blocks(StemBodyHead()) == ("stem", "body")
    card = (save_pretrained(StemBodyHead(), tmp_path) / "README.md").read_text()
    assert "(stem, body)" in card and 'include="stem|body"' in _reuse_line(card)


def test_a_folder_pushed_without_a_card_gets_the_same_card_as_save_pretrained_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: dict[str, bytes] = {}

    def create_commit(self: HfApi, repo_id: str, operations: list[CommitOperationAdd], **kwargs: Any) -> CommitInfo:
        for op in operations:
            data = op.path_or_fileobj
            sent[op.path_in_repo] = data if isinstance(data, bytes) else Path(str(data)).read_bytes()
        oid = "0" * 40
        url = f"https://huggingface.co/{repo_id}/commit/{oid}"
        return CommitInfo(commit_url=url, commit_message="m", commit_description="", oid=oid)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: repo_id)
    monkeypatch.setattr(HfApi, "create_commit", create_commit)
    net = MLP(6, (5, 4), 2)
    folder = save_pretrained(net, tmp_path / "m", card={"repo_id": "org/m"})
    expected = (folder / "README.md").read_bytes()
    (folder / "README.md").unlink()
    push_to_hub(folder, "org/m")  # the folder has no card: rendered from config.json (network built on meta)
    assert sent["README.md"] == expected
    assert b'load_pretrained("hf://org/m", include="hidden[12]", into=new_net)' in expected


def test_zoo_metadata_adds_the_recipe_and_training_sections() -> None:
    document = {
        "library": "lightning-dnn",
        "library_version": "0.1.0",
        "architecture": "MLP",
        "config": {"in_features": 4, "hidden": [3, 3], "out_features": 2},
        "metadata": {
            "dataset": "digits",
            "classes": ["a", "b"],
            "labels": [5, 6],
            "metrics": {"test_accuracy": 0.5},
            "zoo_name": "tiny",
            "training": {"recipe": "recipe.yaml", "epochs": 3, "best_epoch": 1, "monitor": "val_loss"},
        },
    }
    card = render_model_card(document, {"description": "A tiny net."})
    front = yaml.safe_load(card.split("---")[1])
    assert front["datasets"] == ["digits"] and front["metrics"] == ["test_accuracy"]
    assert card.splitlines()[card.splitlines().index("# tiny") + 2] == "A tiny net."
    assert 'load_pretrained("zoo:tiny", include="hidden[12]", into=new_net)' in card
    assert "`lightning-dnn zoo build tiny` from `recipe.yaml`" in card
    assert "- classes, in output order: `a` (label 5), `b` (label 6)" in card
    assert "- epochs: 3 (weights of epoch 2, the best val_loss)" in card


def test_a_network_that_cannot_be_rebuilt_gets_a_card_without_layer_names() -> None:
    document = {"architecture": "NotRegistered", "config": {}, "metadata": {}}
    card = render_model_card(document)
    assert "include=" not in card and "parameters." not in card and "## How to load" in card


def test_include_pattern_selects_exactly_the_names() -> None:
    names = [f"hidden{i}" for i in range(1, 12)]
    pattern = include_pattern(names)
    assert pattern == "|".join(names)  # ten or more: no character class
    assert include_pattern(["hidden1", "hidden3"]) == "hidden1|hidden3"
    assert include_pattern(["layer.1"]) == r"layer\.1"


def test_lower_blocks_checks_its_argument() -> None:
    with pytest.raises(TypeError, match=r"`net` must be an nn\.Module"):
        lower_blocks("MLP")  # type: ignore[arg-type]


def test_card_of_a_saved_folder_reads_back(tmp_path: Path) -> None:
    folder = save_pretrained(MLP(6, (5,), 2), tmp_path, metadata={"dataset": "digits"})
    assert render_model_card(read_config(folder / "config.json")) == (folder / "README.md").read_text()
