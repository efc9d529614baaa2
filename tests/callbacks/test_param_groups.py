"""Param-group surgery without a Trainer: a group added mid-schedule follows the schedule like one present from
the start, against a matrix of torch's schedulers and ours.

For each scheduler: one optimizer with one group is stepped ``BEFORE`` times, a group is added through
``add_param_group`` (at ``RATIO`` times the first group's lr, or ``lr=None``), and both are stepped ``AFTER`` more
times. The references are independent runs: the same scheduler on an untouched one-group optimizer (the first
group must not notice the surgery) and on an optimizer that holds both groups from the start, with the second
group's lr-valued arguments scaled by ``RATIO`` (the new group must follow its curve, lr and momentum).
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import SGD, Adam, Optimizer
from torch.optim import lr_scheduler as S

from lightning_dnn.callbacks._param_groups import add_param_group, check_proportional, lr_ratio
from lightning_dnn.optim import exponential_decay, piecewise_constant, power_decay

LR = 0.1
RATIO = 0.2
BEFORE, AFTER = 5, 10
TOTAL = BEFORE + AFTER

# name -> (make(optimizer, ks), optimizer class, steps with a metric); `ks` holds one factor per param group
# (1.0 for the first, RATIO for a group present from the start) for the arguments that are learning rates.
Make = Callable[[Optimizer, Sequence[float]], Any]


def _plateau_scalar(o: Optimizer, ks: Sequence[float]) -> Any:
    # a scalar floor on the surgery run; the two-group reference spells out the floor the new group must get
    floor: Any = 0.02 if len(ks) == 1 else [0.02 * k for k in ks]
    return S.ReduceLROnPlateau(o, factor=0.7, patience=1, min_lr=floor)


SCHEDULERS: dict[str, tuple[Make, type[Optimizer], bool]] = {
    "StepLR": (lambda o, ks: S.StepLR(o, step_size=2, gamma=0.5), SGD, False),
    "MultiStepLR": (lambda o, ks: S.MultiStepLR(o, milestones=[3, 7, 9], gamma=0.5), SGD, False),
    "ExponentialLR": (lambda o, ks: S.ExponentialLR(o, gamma=0.9), SGD, False),
    "MultiplicativeLR": (lambda o, ks: S.MultiplicativeLR(o, lambda t: 0.95), SGD, False),
    "CosineAnnealingLR": (lambda o, ks: S.CosineAnnealingLR(o, T_max=12), SGD, False),
    "CosineAnnealingWarmRestarts": (lambda o, ks: S.CosineAnnealingWarmRestarts(o, T_0=4), SGD, False),
    "PolynomialLR": (lambda o, ks: S.PolynomialLR(o, total_iters=12, power=2.0), SGD, False),
    "OneCycleLR": (
        lambda o, ks: S.OneCycleLR(o, max_lr=[LR * k for k in ks], total_steps=TOTAL + 1),
        SGD,
        False,
    ),
    "OneCycleLR-adam": (
        lambda o, ks: S.OneCycleLR(o, max_lr=[LR * k for k in ks], total_steps=TOTAL + 1),
        Adam,
        False,
    ),
    "CyclicLR": (
        lambda o, ks: S.CyclicLR(o, [0.01 * k for k in ks], [LR * k for k in ks], step_size_up=3),
        SGD,
        False,
    ),
    "CyclicLR-adam-exp_range": (
        lambda o, ks: S.CyclicLR(
            o, [0.01 * k for k in ks], [LR * k for k in ks], step_size_up=2, mode="exp_range", gamma=0.9
        ),
        Adam,
        False,
    ),
    "LambdaLR": (lambda o, ks: S.LambdaLR(o, lambda t: 0.9**t), SGD, False),
    "SequentialLR": (  # switches after the surgery: the second scheduler restarts from the extended base_lrs
        lambda o, ks: S.SequentialLR(
            o, [S.LinearLR(o, start_factor=0.5, total_iters=4), S.ExponentialLR(o, gamma=0.9)], milestones=[8]
        ),
        SGD,
        False,
    ),
    "ChainedScheduler": (
        lambda o, ks: S.ChainedScheduler(
            [S.ConstantLR(o, factor=0.5, total_iters=7), S.ExponentialLR(o, 0.9)]
        ),
        SGD,
        False,
    ),
    "ReduceLROnPlateau": (
        lambda o, ks: S.ReduceLROnPlateau(o, factor=0.7, patience=1, min_lr=[0.02 * k for k in ks]),
        SGD,
        True,
    ),
    "ReduceLROnPlateau-scalar-min_lr": (_plateau_scalar, SGD, True),
    "exponential_decay": (lambda o, ks: exponential_decay(o, decay_steps=3, decay_rate=0.5), SGD, False),
    "exponential_decay-staircase": (
        lambda o, ks: exponential_decay(o, decay_steps=3, decay_rate=0.5, staircase=True),
        SGD,
        False,
    ),
    "power_decay": (lambda o, ks: power_decay(o, decay_steps=2, power=1.0), SGD, False),
    "piecewise_constant-relative": (
        lambda o, ks: piecewise_constant(o, boundaries=[3, 8], values=[1.0, 0.5, 0.1], relative=True),
        SGD,
        False,
    ),
}

# Schedulers that cannot keep a new group in proportion: refused for a ratio other than 1, fine for lr=None.
NOT_PROPORTIONAL: dict[str, tuple[Make, str]] = {
    "CosineAnnealingLR-eta_min": (
        lambda o, ks: S.CosineAnnealingLR(o, T_max=12, eta_min=0.01),
        r"CosineAnnealingLR\(eta_min=0\.01\) anneals every param group to the same floor",
    ),
    "CosineAnnealingWarmRestarts-eta_min": (
        lambda o, ks: S.CosineAnnealingWarmRestarts(o, T_0=4, eta_min=0.01),
        r"CosineAnnealingWarmRestarts\(eta_min=0\.01\)",
    ),
    "piecewise_constant-absolute": (
        lambda o, ks: piecewise_constant(o, boundaries=[3, 8], values=[0.1, 0.05, 0.01]),
        r"absolute values \(piecewise_constant\(relative=False\)\)",
    ),
    "SequentialLR-with-eta_min": (
        lambda o, ks: S.SequentialLR(
            o, [S.ConstantLR(o, factor=0.5, total_iters=3), S.CosineAnnealingLR(o, 10, eta_min=0.01)], [3]
        ),
        r"CosineAnnealingLR\(eta_min=0\.01\)",
    ),
}


def param() -> nn.Parameter:
    return nn.Parameter(torch.ones(2))


def make_optimizer(cls: type[Optimizer], ks: Sequence[float]) -> Optimizer:
    groups = [{"params": [param()], "lr": LR * k} for k in ks]
    if cls is SGD:
        return SGD(groups, lr=LR, momentum=0.9)
    return cls(groups, lr=LR)


def hyper(opt: Optimizer) -> list[tuple[float, float]]:
    """(lr, momentum or beta1) of every group."""
    out = []
    for g in opt.param_groups:
        momentum = g["betas"][0] if "betas" in g else g.get("momentum", 0.0)
        out.append((float(g["lr"]), float(momentum)))
    return out


def step(opt: Optimizer, sched: Any, with_metric: bool) -> None:
    for g in opt.param_groups:
        for p in g["params"]:
            p.grad = torch.ones_like(p)
    opt.step()
    sched.step(1.0) if with_metric else sched.step()


def run(name: str, ks: Sequence[float], steps: int) -> list[list[tuple[float, float]]]:
    """The (lr, momentum) of every group after each of ``steps`` steps, on an optimizer holding ``len(ks)`` groups."""
    make, cls, with_metric = SCHEDULERS[name]
    opt = make_optimizer(cls, ks)
    sched = make(opt, ks)
    out = [hyper(opt)]
    for _ in range(steps):
        step(opt, sched, with_metric)
        out.append(hyper(opt))
    return out


def run_with_surgery(
    make: Make, cls: type[Optimizer], with_metric: bool, new_lr: Callable[[float], float | None]
) -> tuple[Optimizer, Any, list[list[tuple[float, float]]]]:
    opt = make_optimizer(cls, [1.0])
    sched = make(opt, [1.0])
    out = [hyper(opt)]
    for _ in range(BEFORE):
        step(opt, sched, with_metric)
        out.append(hyper(opt))
    add_param_group(
        opt, [param()], name="new", lr=new_lr(float(opt.param_groups[0]["lr"])), schedulers=[sched]
    )
    out[-1] = hyper(opt)  # the state right after the surgery, before the next step
    for _ in range(AFTER):
        step(opt, sched, with_metric)
        out.append(hyper(opt))
    return opt, sched, out


@pytest.mark.parametrize("name", list(SCHEDULERS))
@pytest.mark.parametrize("ratio", [RATIO, None], ids=["lr", "lr=None"])
def test_new_group_follows_the_schedule_of_a_group_present_from_the_start(
    name: str, ratio: float | None
) -> None:
    make, cls, with_metric = SCHEDULERS[name]
    k = 1.0 if ratio is None else ratio
    opt, sched, got = run_with_surgery(
        make, cls, with_metric, lambda lr0: None if ratio is None else ratio * lr0
    )

    untouched = run(name, [1.0], TOTAL)
    from_start = run(name, [1.0, k], TOTAL)
    assert len(set(lr for lr, _ in (g[0] for g in untouched))) > 2  # the schedule does move the lr
    # the first group never notices the surgery: bit for bit the untouched run, lr and momentum
    assert [g[0] for g in got] == [g[0] for g in untouched]
    assert all(len(g) == 1 for g in got[:BEFORE]) and all(len(g) == 2 for g in got[BEFORE:])
    # the new group follows the curve of a group present from the start with `k` times the first group's lr
    for t in range(BEFORE, TOTAL + 1):
        assert got[t][1] == pytest.approx(from_start[t][1], rel=1e-9, abs=1e-15), (name, t)
    if ratio is None:
        assert all(g[1] == g[0] for g in got[BEFORE:])  # exactly the first group's values
    assert opt.param_groups[1]["name"] == "new"
    if hasattr(sched, "get_last_lr"):
        assert len(sched.get_last_lr()) == 2


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_state_round_trips_after_the_surgery(name: str) -> None:
    make, cls, with_metric = SCHEDULERS[name]
    opt, sched, _ = run_with_surgery(make, cls, with_metric, lambda lr0: RATIO * lr0)
    opt_state = pickle.loads(pickle.dumps(opt.state_dict()))
    sched_state = pickle.loads(pickle.dumps(sched.state_dict()))  # what a checkpoint holds

    # resume: a fresh optimizer with both groups, the scheduler built on it, then the saved states loaded
    fresh_opt = make_optimizer(cls, [1.0, RATIO])
    fresh_sched = make(fresh_opt, [1.0, RATIO])
    fresh_opt.load_state_dict(opt_state)
    fresh_sched.load_state_dict(sched_state)
    assert hyper(fresh_opt) == hyper(opt)
    for _ in range(3):
        if name.startswith("OneCycleLR") and sched.last_epoch >= TOTAL + 1:
            break
        step(opt, sched, with_metric)
        step(fresh_opt, fresh_sched, with_metric)
        assert hyper(fresh_opt) == hyper(opt)


@pytest.mark.parametrize("name", list(NOT_PROPORTIONAL))
def test_schedulers_that_cannot_keep_the_ratio_are_refused_before_anything_changes(name: str) -> None:
    make, match = NOT_PROPORTIONAL[name]
    opt = make_optimizer(SGD, [1.0])
    sched = make(opt, [1.0])
    for _ in range(BEFORE):
        step(opt, sched, False)
    before = {k: list(v) for k, v in vars(sched).items() if isinstance(v, list)}
    with pytest.raises(ValueError, match=match):
        add_param_group(opt, [param()], name="new", lr=0.5 * opt.param_groups[0]["lr"], schedulers=[sched])
    assert len(opt.param_groups) == 1
    assert {k: list(v) for k, v in vars(sched).items() if isinstance(v, list)} == before
    with pytest.raises(ValueError, match=match):
        check_proportional(sched)

    # following the first group exactly (lr=None) is fine: the new group equals it at every step
    add_param_group(opt, [param()], name="new", lr=None, schedulers=[sched])
    for _ in range(AFTER):
        step(opt, sched, False)
        lr0, lr1 = (g["lr"] for g in opt.param_groups)
        assert lr1 == lr0


def test_warm_up_from_zero_takes_the_ratio_to_the_initial_lr() -> None:
    opt = make_optimizer(SGD, [1.0])
    sched = S.LambdaLR(opt, lambda t: min(1.0, t / 4))  # lr 0 at step 0
    assert opt.param_groups[0]["lr"] == 0.0
    assert lr_ratio(opt.param_groups[0], 0.02) == pytest.approx(0.2)
    add_param_group(opt, [param()], name="new", lr=0.02, schedulers=[sched])
    assert opt.param_groups[1]["lr"] == 0.0 and opt.param_groups[1]["initial_lr"] == pytest.approx(0.02)
    for _ in range(6):
        step(opt, sched, False)
        lr0, lr1 = (g["lr"] for g in opt.param_groups)
        assert lr1 == pytest.approx(0.2 * lr0, rel=1e-12)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.02)


def test_schedulers_of_another_optimizer_are_left_alone() -> None:
    opt, other = make_optimizer(SGD, [1.0]), make_optimizer(SGD, [1.0])
    sched = S.StepLR(other, step_size=1)
    add_param_group(opt, [param()], name="new", lr=0.05, schedulers=[sched])
    assert len(sched.base_lrs) == 1 and [g["lr"] for g in opt.param_groups] == [LR, pytest.approx(0.05)]


def test_named_parameter_groups_need_names() -> None:
    opt = SGD([("a", param())], lr=LR)
    with pytest.raises(ValueError, match="`param_names` is required"):
        add_param_group(opt, [param()], name="new")
    assert len(opt.param_groups) == 1
    group = add_param_group(opt, [param()], name="new", param_names=["b"])
    assert group["param_names"] == ["b"] and opt.state_dict()["param_groups"][1]["param_names"] == ["b"]


class WarmupLambdaLR(S.LambdaLR):
    """A custom scheduler with a per-group list the surgery cannot know about."""

    def __init__(self, optimizer: Optimizer) -> None:
        self.warmup_lrs = [0.01] * len(optimizer.param_groups)
        super().__init__(optimizer, lambda t: 1.0)


def test_unknown_per_group_lists_are_reported() -> None:
    opt = make_optimizer(SGD, [1.0])
    sched = WarmupLambdaLR(opt)
    with pytest.warns(UserWarning, match=r"WarmupLambdaLR keeps per-param-group lists \['warmup_lrs'\]"):
        add_param_group(opt, [param()], name="new", schedulers=[sched])
