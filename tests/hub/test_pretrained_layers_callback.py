"""PretrainedLayers: a fresh fit starts from the selected pretrained tensors, a resumed one from its checkpoint."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn import DNNClassifier
from lightning_dnn.callbacks import FeatureCache, LayerFreezer
from lightning_dnn.hub import PretrainedLayers, StrictLoadError, load_state_dict_partial, save_pretrained
from lightning_dnn.nn import MLP
from tests.ddp_utils import run_ddp_script
from tests.trainer_utils import quiet_trainer, quiet_trainer_kwargs

ZOO = Path(__file__).resolve().parents[2] / "zoo"


def _source(tmp_path: Path) -> tuple[MLP, Path]:
    """A 'pretrained' 6-(8, 8, 8)-3 network saved as a lightning-dnn folder."""
    torch.manual_seed(1)
    net = MLP(6, (8, 8, 8), 3)
    folder = save_pretrained(net, tmp_path / "source")
    return net, Path(folder)


def _model(seed: int = 0, lr: float = 0.01) -> DNNClassifier:
    """The target: the same trunk with a new 4-way head, its own random init."""
    torch.manual_seed(seed)
    return DNNClassifier(MLP(6, (8, 8, 8), 4), optimizer="adam", lr=lr)


def _loader() -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 6, generator=gen), torch.randint(0, 4, (32,), generator=gen))
    return DataLoader(data, batch_size=8, shuffle=False)


def _fit(tmp_path: Path, model: DNNClassifier, callbacks: list, epochs: int = 1, **kwargs) -> pl.Trainer:
    trainer = quiet_trainer(tmp_path, max_epochs=epochs, callbacks=callbacks)
    trainer.fit(model, _loader(), **kwargs)
    return trainer


def test_loads_exactly_the_included_tensors_bit_equal(tmp_path):
    source, folder = _source(tmp_path)
    model = _model()
    before = copy.deepcopy(model.net.state_dict())
    reuse = PretrainedLayers(folder, include="hidden[12]")
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=0, callbacks=[reuse])
    trainer.fit(model, _loader())
    after, pretrained = model.net.state_dict(), source.state_dict()
    selected = [f"hidden{i}.linear.{t}" for i in (1, 2) for t in ("weight", "bias")]
    assert reuse.report is not None and reuse.report.loaded == selected
    for name in after:
        expected = pretrained[name] if name in selected else before[name]
        assert torch.equal(after[name], expected), name
    assert not torch.equal(after["hidden3.linear.weight"], pretrained["hidden3.linear.weight"])


def test_a_zoo_entry_loads_offline_from_the_clone(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    model = DNNClassifier(MLP(784, (100,) * 5, 5))
    reuse = PretrainedLayers("zoo:fashion-5x100-elu-classes0-4", include="hidden[1-3]")
    data = TensorDataset(torch.rand(4, 784), torch.randint(0, 5, (4,)))
    trainer = quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=0, callbacks=[reuse])
    trainer.fit(model, DataLoader(data))
    file = load_file(ZOO / "fashion-5x100-elu-classes0-4" / "model.safetensors")
    state = model.net.state_dict()
    assert [n for n in state if torch.equal(state[n], file[n])] == reuse.report.loaded
    assert reuse.report.loaded == [f"hidden{i}.linear.{t}" for i in (1, 2, 3) for t in ("weight", "bias")]


@pytest.mark.parametrize("first", [True, False], ids=["loader-first", "loader-last"])
def test_frozen_cached_layers_hold_the_pretrained_values_whatever_the_callback_order(tmp_path, first):
    source, folder = _source(tmp_path)
    # the reference: the tensors loaded by hand before the fit, then the same frozen, cached training
    reference = _model()
    load_state_dict_partial(reference.net, source.state_dict(), include="hidden[1-3]")
    _fit(tmp_path / "ref", reference, [LayerFreezer("hidden[1-3]"), FeatureCache()], epochs=2)

    model = _model()
    reuse = PretrainedLayers(folder, include="hidden[1-3]")
    others = [LayerFreezer("hidden[1-3]"), FeatureCache()]
    _fit(tmp_path / "cb", model, [reuse, *others] if first else [*others, reuse], epochs=2)

    trained, expected = model.net.state_dict(), reference.net.state_dict()
    for name in trained:  # the head learnt from the pretrained features
        assert torch.equal(trained[name], expected[name]), name
    assert torch.equal(trained["hidden3.linear.weight"], source.hidden3.linear.weight)  # frozen, not trained
    assert not torch.equal(trained["output.linear.weight"], _model().net.output.linear.weight)
    assert not any(p.requires_grad for p in model.net.hidden2.parameters())


def test_a_resumed_fit_keeps_the_checkpoint_weights(tmp_path):
    _, folder = _source(tmp_path)
    uninterrupted = _model()
    _fit(tmp_path / "a", uninterrupted, [PretrainedLayers(folder, include="hidden[1-3]")], epochs=3)

    first = _model()
    trainer = _fit(tmp_path / "b", first, [PretrainedLayers(folder, include="hidden[1-3]")], epochs=1)
    ckpt = tmp_path / "epoch1.ckpt"
    trainer.save_checkpoint(ckpt)

    resumed, reuse = _model(seed=7), PretrainedLayers(folder, include="hidden[1-3]")
    _fit(tmp_path / "c", resumed, [reuse], epochs=3, ckpt_path=str(ckpt))
    assert reuse.report is None  # nothing loaded over the checkpoint
    assert reuse.state_dict()["loaded"] == [
        f"hidden{i}.linear.{t}" for i in (1, 2, 3) for t in ("weight", "bias")
    ]
    for name, tensor in resumed.net.state_dict().items():  # as if never interrupted: hidden1-3 were not reset
        torch.testing.assert_close(tensor, uninterrupted.net.state_dict()[name], rtol=0, atol=0, msg=name)


def test_every_fresh_fit_loads_again(tmp_path):
    source, folder = _source(tmp_path)
    model, reuse = _model(), PretrainedLayers(folder, include="hidden1")
    _fit(tmp_path, model, [reuse], epochs=1)  # trains hidden1 away from the source
    assert not torch.equal(model.net.hidden1.linear.weight, source.hidden1.linear.weight)
    quiet_trainer(tmp_path, max_epochs=1, limit_train_batches=0, callbacks=[reuse]).fit(model, _loader())
    assert torch.equal(model.net.hidden1.linear.weight, source.hidden1.linear.weight)


def test_bad_sources_are_refused_when_the_callback_is_built(tmp_path):
    with pytest.raises(ValueError, match="fashion-5x100-elu-classes0-4"):  # the close match
        PretrainedLayers("zoo:fashion-5x100-elu-classes0-5")
    with pytest.raises(FileNotFoundError, match="not an existing folder"):
        PretrainedLayers(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="hf://org/name"):
        PretrainedLayers("hf://not-a-repo-id")
    with pytest.raises(TypeError, match="`source` must be"):
        PretrainedLayers(3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty revision"):
        PretrainedLayers("hf://org/name@")
    with pytest.raises(ValueError, match="names revision 'v1' but `revision`='v2'"):
        PretrainedLayers("hf://org/name@v1", revision="v2")
    with pytest.raises(ValueError, match="cannot override zoo entry"):
        PretrainedLayers("zoo:fashion-5x100-elu-classes0-4", revision="main")
    _, folder = _source(tmp_path)
    with pytest.raises(ValueError, match="`revision`"):
        PretrainedLayers(folder, revision="main")
    with pytest.raises(ValueError, match="include"):
        PretrainedLayers(folder, include="hidden[")
    with pytest.raises(TypeError, match="strict"):
        PretrainedLayers(folder, strict="yes")  # type: ignore[arg-type]


def test_a_selection_that_does_not_fit_stops_the_fit_before_training(tmp_path):
    _, folder = _source(tmp_path)
    model = _model()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match=r"include.*hidden9"):
        _fit(tmp_path, model, [PretrainedLayers(folder, include="hidden9")])
    with pytest.raises(StrictLoadError, match=r"output\.linear\.weight"):  # a 3-way head into a 4-way one
        _fit(tmp_path, model, [PretrainedLayers(folder)])
    for name, tensor in model.state_dict().items():  # nothing copied, nothing trained
        assert torch.equal(tensor, before[name]), name


@pytest.mark.ddp
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_every_ddp_process_starts_from_the_pretrained_layers(tmp_path):
    source, _ = _source(tmp_path)
    run_ddp_script(Path(__file__), tmp_path, world_size=2)
    ranks = [load_file(tmp_path / f"rank{r}.safetensors") for r in (0, 1)]
    assert all(torch.equal(ranks[0][n], ranks[1][n]) for n in ranks[0]), "the processes diverged"
    for name, tensor in source.state_dict().items():
        if name.startswith(("hidden1.", "hidden2.")):  # loaded and frozen on every process
            assert torch.equal(ranks[0][name], tensor), name
    initial = _model().net.state_dict()
    assert not torch.equal(ranks[0]["hidden3.linear.weight"], source.hidden3.linear.weight)  # trained from it
    assert not torch.equal(ranks[0]["output.linear.weight"], initial["output.linear.weight"])


def _ddp_main(out: Path, world_size: int) -> None:
    """One process of the DDP test (Lightning launches the others by running this file again)."""
    # a different initial model on every process
    torch.manual_seed(100 + int(os.environ.get("LOCAL_RANK", "0")))
    model = DNNClassifier(MLP(6, (8, 8, 8), 4), optimizer="adam", lr=0.01)
    callbacks = [LayerFreezer("hidden[12]"), PretrainedLayers(out / "source", include="hidden[1-3]")]
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            out,
            strategy="ddp",
            devices=world_size,
            max_epochs=2,
            callbacks=callbacks,
        )
    )
    trainer.fit(model, _loader())
    save_file(
        {k: v.contiguous() for k, v in model.net.state_dict().items()},
        out / f"rank{trainer.global_rank}.safetensors",
    )


if __name__ == "__main__":
    _ddp_main(Path(sys.argv[1]), int(sys.argv[2]))


def test_a_strategy_that_shards_the_parameters_is_refused(tmp_path):
    # FSDP needs a GPU to run; its strategy object alone is enough for the check made in `setup`
    fsdp = pl.strategies.FSDPStrategy.__new__(pl.strategies.FSDPStrategy)
    reuse = PretrainedLayers(_source(tmp_path)[1])
    with pytest.raises(ValueError, match="single-device and DDP strategies, got FSDPStrategy"):
        reuse.setup(SimpleNamespace(strategy=fsdp), _model(), "fit")  # type: ignore[arg-type]
    reuse.setup(SimpleNamespace(strategy=fsdp), _model(), "validate")  # only a fit loads anything
