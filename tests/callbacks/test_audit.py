"""The freeze audit: its numbers against counts computed here, its flags on modules built to raise them, its cut
against the one FeatureCache makes in a fit, and FreezeAuditor's log at fit start."""

from __future__ import annotations

import logging
from collections import OrderedDict
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import BaseFinetuning
from torch import Tensor, nn

from lightning_dnn.callbacks import FeatureCache, FreezeAuditor, LayerFreezer, freeze_audit
from lightning_dnn.data import DeviceBatchLoader
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer_kwargs

D, C = 6, 3


def numel(module: nn.Module, trainable: bool) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad == trainable)


class Tokens(nn.Module):
    """``embed -> + pos (held by the root) -> body -> output``, a class token prepended in forward (a ViT's shape)."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(D, 8)
        self.pos = nn.Parameter(torch.zeros(1, 2, 8))  # for 2 tokens: the class token comes after
        self.token = nn.Parameter(torch.zeros(1, 1, 8))
        self.body = nn.Sequential(OrderedDict(linear=nn.Linear(8, 8), norm=nn.BatchNorm1d(3)))
        self.output = nn.Linear(8, C)

    def forward(self, x: Tensor) -> Tensor:  # x: [N, 2, D]
        x = self.embed(x) + self.pos
        x = torch.cat([self.token.expand(len(x), -1, -1), x], dim=1)
        return self.output(self.body(x)[:, 0])


def mlp() -> DNNClassifier:
    torch.manual_seed(0)
    return DNNClassifier(MLP(D, (8, 8, 8), C, norm="batch"), optimizer="adam", lr=1e-2)  # type: ignore[arg-type]


def test_counts_per_block_and_per_module_match_the_parameters() -> None:
    model = mlp()
    model.net.hidden1.requires_grad_(False)
    model.net.hidden2.linear.requires_grad_(False)  # hidden2: partly frozen
    model.eval()  # frozen batch norm in eval mode: nothing to flag
    audit = freeze_audit(model)
    blocks = dict(model.net.named_children())
    assert [r.name for r in audit.rows] == [f"net.{n}" for n in blocks]
    for row in audit.rows:
        block = blocks[row.name.removeprefix("net.")]
        assert (row.trainable, row.frozen) == (numel(block, True), numel(block, False))
        assert row.kind == type(block).__name__
    assert (audit.trainable, audit.frozen) == (numel(model, True), numel(model, False))
    assert [r.flags for r in audit.rows][:2] == [(), ("partly frozen",)]

    verbose = freeze_audit(model, verbose=True)
    owners = {
        n: m
        for n, m in model.named_modules()
        if list(m.parameters(recurse=False)) or list(m.buffers(recurse=False))
    }
    assert [r.name for r in verbose.rows] == list(owners)
    for row in verbose.rows:
        own = list(owners[row.name].parameters(recurse=False))
        assert row.trainable == sum(p.numel() for p in own if p.requires_grad)
        assert row.frozen == sum(p.numel() for p in own if not p.requires_grad)
    lines = str(audit).splitlines()  # title, header, one line per row, total
    for row, line in zip(audit.rows, lines[2:], strict=False):
        assert line.split()[:4] == [row.name, row.kind, f"{row.trainable:,}", f"{row.frozen:,}"]
    assert lines[2 + len(audit.rows)].split()[:3] == ["total", f"{audit.trainable:,}", f"{audit.frozen:,}"]


def test_frozen_batch_norm_in_training_mode_is_flagged_in_each_of_its_forms() -> None:
    model = mlp()
    model.net.hidden1.requires_grad_(False)  # requires_grad_(False) alone: still in training mode
    BaseFinetuning.freeze(
        [model.net.hidden2], train_bn=False
    )  # finetuning-scheduler: tracking off, train mode
    model.net.hidden3.bn = nn.BatchNorm1d(8, track_running_stats=False).requires_grad_(False)
    norms = {n.name: n for n in freeze_audit(model).norms}
    assert norms["net.hidden1.bn"].flag == "running statistics keep updating"
    assert norms["net.hidden2.bn"].flag is not None and "batch statistics" in norms["net.hidden2.bn"].flag
    assert not norms["net.hidden2.bn"].tracking
    assert norms["net.hidden3.bn"].flag is not None and "every mode" in norms["net.hidden3.bn"].flag
    audit = freeze_audit(model)
    flagged = ("frozen norm not fixed",)
    assert [r.flags for r in audit.rows] == [flagged, flagged, ("partly frozen", *flagged), ()]
    assert len(audit.problems) == 3

    model.net.eval()  # eval mode: running statistics fixed, nothing to flag for hidden1 and hidden2
    audit = freeze_audit(model)
    assert [n.name for n in audit.norms if n.flag] == ["net.hidden3.bn"]
    assert [r.norms for r in audit.rows] == ["1 eval", "1 eval", "", ""]


def test_parameters_held_by_a_parent_are_listed_and_flagged() -> None:
    net = Tokens()
    net.pos.requires_grad_(False)
    audit = freeze_audit(net)
    assert [(h.name, h.holder, h.numel, h.trainable) for h in audit.held] == [
        ("pos", "", 16, False),
        ("token", "", 8, True),
    ]
    assert audit.rows[0].name == "" and "holds parameters itself" in audit.rows[0].flags
    assert (audit.rows[0].trainable, audit.rows[0].frozen) == (8, 16)
    assert audit.problems == ["token: trainable parameter held by the root itself, not by a child"]
    assert "Held by the root itself: token (8, trainable)" in str(audit)


def test_the_cut_is_where_feature_cache_cuts_in_a_fit(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    data = DeviceBatchLoader(
        torch.randn(32, D, generator=gen), torch.randint(0, C, (32,), generator=gen), batch_size=8
    )
    auditor, cache = FreezeAuditor(example_input=torch.randn(8, D)), FeatureCache()
    trainer = pl.Trainer(
        callbacks=[LayerFreezer("hidden[12]"), cache, auditor],
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, num_sanity_val_steps=0),
    )
    trainer.fit(mlp(), data)
    assert auditor.audit is not None and auditor.audit.cut is not None
    assert not auditor.audit.cut.refused
    assert auditor.audit.cut.boundary == cache.current_boundary == "net.hidden2"
    assert auditor.audit.cut.reason == "caches the output of net.hidden2: net.hidden3.linear is trainable"


def test_an_impossible_cut_says_why() -> None:
    net = Tokens()
    for name, p in net.named_parameters():
        p.requires_grad_(not name.startswith("output"))
    net.embed.requires_grad_(False)
    net.pos.requires_grad_(False)
    net.eval()
    audit = freeze_audit(net, example_input=torch.randn(4, 2, D))  # cut after embed: pos and token come after
    assert audit.cut is not None and audit.cut.boundary == "embed" and not audit.cut.refused

    net.requires_grad_(False).output.requires_grad_(True)  # everything frozen but the head: cut after body
    audit = freeze_audit(net, example_input=torch.randn(4, 2, D))
    assert audit.cut is not None and audit.cut.refused and audit.cut.boundary == "body"
    assert "cannot run on its output (cached) (RuntimeError" in audit.cut.reason
    assert audit.problems[-1].startswith("FeatureCache: the layers after body cannot run")

    no_input = freeze_audit(net)
    assert no_input.cut is None and "pass `example_input`" in no_input.cut_note


def test_the_schedule_comes_from_the_freezers_dry_run() -> None:
    model = mlp()
    freezer = LayerFreezer("hidden[12]", unfreeze={2: "hidden2", 4: "hidden1"})
    audit = freeze_audit(model, freezer=freezer)
    sizes = [numel(model.net.hidden2, True), numel(model.net.hidden1, True)]
    assert list(audit.schedule) == [
        f"step 0 at epoch 2: unfreezes net.hidden2 ({sizes[0]:,} scalars), lr x1 of the first group",
        f"step 1 at epoch 4: unfreezes net.hidden1 ({sizes[1]:,} scalars), lr x1 of the first group",
    ]
    bad = freeze_audit(model, freezer=LayerFreezer("hidden1", unfreeze={1: "hidden3"}))
    assert bad.schedule[0].startswith("invalid: `unfreeze[1]`") and bad.problems == [bad.schedule[0]]

    class NoDryRun:
        pass

    assert freeze_audit(model, freezer=NoDryRun()).schedule == (
        "NoDryRun has no dry_run(); its schedule is not shown",
    )


def test_the_auditor_logs_the_state_after_the_freezers_initial_freeze(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gen = torch.Generator().manual_seed(0)
    data = DeviceBatchLoader(
        torch.randn(16, D, generator=gen), torch.randint(0, C, (16,), generator=gen), batch_size=8
    )
    model, auditor = mlp(), FreezeAuditor()
    trainer = pl.Trainer(
        callbacks=[LayerFreezer("hidden1", bn="train"), auditor],
        **quiet_trainer_kwargs(tmp_path, max_epochs=1, num_sanity_val_steps=0),
    )
    with (
        caplog.at_level(logging.INFO),
        pytest.warns(
            UserWarning,
            match=r"FreezeAuditor: net\.hidden1\.bn: frozen BatchNorm1d not fixed: running statistics",
        ),
    ):
        trainer.fit(model, data)
    audit = auditor.audit
    assert audit is not None
    assert audit.rows[0].frozen == numel(model.net.hidden1, True) + numel(model.net.hidden1, False)
    assert audit.frozen == audit.rows[0].frozen  # nothing else frozen
    assert str(audit) in caplog.text
    assert "1 frozen parameter tensors" not in str(audit)
    assert "under DDP, 3 frozen parameter tensors" in audit.ddp[0]


def test_argument_errors() -> None:
    with pytest.raises(TypeError, match=r"`pl_module_or_net` must be an nn\.Module, got dict"):
        freeze_audit({})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`verbose`"):
        FreezeAuditor(verbose=1)  # type: ignore[arg-type]


def test_an_audit_before_training_shows_the_network_as_the_freezer_will_start_the_fit() -> None:
    model = DNNClassifier(MLP(64, (100, 100, 50), 10, norm="batch"))
    freezer = LayerFreezer("hidden[12]", unfreeze={3: "hidden2"})
    subtrees = {n for n, _ in model.named_modules() if n.startswith(("net.hidden1", "net.hidden2"))}
    assert set(freezer.initially_frozen(model)) == subtrees
    audit = freeze_audit(model, freezer=freezer)
    frozen = numel(model.net.hidden1, True) + numel(model.net.hidden2, True)
    assert audit.frozen == frozen
    assert audit.trainable == sum(p.numel() for p in model.parameters()) - frozen
    modes = {n.name: n.training for n in audit.norms}
    assert modes == {"net.hidden1.bn": False, "net.hidden2.bn": False, "net.hidden3.bn": True}
    assert audit.problems == []
    assert any("unfreezes net.hidden2" in s for s in audit.schedule)
    # the user's model is untouched: the preview froze a copy
    assert all(p.requires_grad for p in model.parameters()) and model.net.hidden1.bn.training


class TokenNet(nn.Module):
    """Holds a tensor itself next to its blocks (timm ViT's cls_token), batch norm in the body."""

    def __init__(self) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(6))
        self.body = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x + self.token))


def test_a_preview_of_freeze_all_but_head_keeps_the_head_trainable_when_the_root_holds_tensors() -> None:
    net = TokenNet()
    freezer = LayerFreezer.freeze_all_but_head("head")
    assert freezer.initially_frozen(net) == ["", "body", "body.0", "body.1"]
    audit = freeze_audit(net, freezer=freezer)
    rows = {r.name: (r.trainable, r.frozen) for r in audit.rows}
    assert rows["head"] == (numel(net.head, True), 0)
    assert rows["body"] == (0, numel(net.body, True))
    assert audit.frozen == numel(net.body, True) + net.token.numel()
    assert [(n.name, n.training, n.kept_eval) for n in audit.norms] == [("body.1", False, True)]
    assert not any("body.1" in p for p in audit.problems)  # kept in eval by the freezer: not flagged
    assert all(p.requires_grad for p in net.parameters())  # the preview froze a copy
