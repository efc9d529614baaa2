"""Learning-rate schedules against TF's closed forms, per optimizer step t counted from 0."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_dnn.optim import (
    SCHEDULE_INTERVAL,
    SCHEDULES,
    build_schedule,
    exponential_decay,
    performance_schedule,
    piecewise_constant,
    power_decay,
)


def sgd(*lrs: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def lrs_per_step(optimizer: torch.optim.Optimizer, scheduler: LRScheduler, steps: int) -> list[list[float]]:
    """The lr of every group used by optimizer step t = 0 .. steps - 1."""
    seen = []
    for _ in range(steps):
        seen.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return seen


@pytest.mark.parametrize("staircase", [False, True])
def test_exponential_decay_closed_form(staircase: bool) -> None:
    opt = sgd(0.1, 0.02)
    seen = lrs_per_step(opt, exponential_decay(opt, decay_steps=7, decay_rate=0.5, staircase=staircase), 50)
    for t, lrs in enumerate(seen):
        exponent = t // 7 if staircase else t / 7
        assert lrs == pytest.approx([0.1 * 0.5**exponent, 0.02 * 0.5**exponent], rel=1e-12)
    if staircase:
        assert seen[6] == seen[0] and seen[7][0] == pytest.approx(0.05)


@pytest.mark.parametrize("staircase", [False, True])
@pytest.mark.parametrize("power", [1.0, 0.5, 2.0])
def test_power_decay_closed_form(power: float, staircase: bool) -> None:
    opt = sgd(0.1, 0.3)
    seen = lrs_per_step(opt, power_decay(opt, decay_steps=5, power=power, staircase=staircase), 50)
    for t, lrs in enumerate(seen):
        ratio = t // 5 if staircase else t / 5
        factor = (1 + ratio) ** -power
        assert lrs == pytest.approx([0.1 * factor, 0.3 * factor], rel=1e-12)


def test_power_decay_with_power_one_is_tf_inverse_time_decay() -> None:
    # tf.train.inverse_time_decay(lr0, t, decay_steps, decay_rate=1) = lr0 / (1 + t / decay_steps)
    opt = sgd(1.0)
    seen = lrs_per_step(opt, power_decay(opt, decay_steps=10), 31)
    assert [seen[t][0] for t in (0, 10, 20, 30)] == pytest.approx([1.0, 0.5, 1 / 3, 0.25])


def test_piecewise_constant_boundaries_belong_to_the_lower_interval() -> None:
    opt = sgd(1.0)
    seen = lrs_per_step(opt, piecewise_constant(opt, boundaries=[10, 20], values=[0.1, 0.01, 0.001]), 30)
    for t, (lr,) in enumerate(seen):
        expected = 0.1 if t <= 10 else 0.01 if t <= 20 else 0.001
        assert lr == expected, t  # exact: values are absolute learning rates


def test_piecewise_constant_values_are_absolute_for_every_group() -> None:
    opt = sgd(1.0, 0.5)
    seen = lrs_per_step(opt, piecewise_constant(opt, [2], [0.3, 0.03]), 5)
    assert seen == [[0.3, 0.3]] * 3 + [[0.03, 0.03]] * 2


def test_piecewise_constant_relative_multiplies_each_group() -> None:
    opt = sgd(1.0, 0.5)
    seen = lrs_per_step(opt, piecewise_constant(opt, [2], [1.0, 0.1], relative=True), 5)
    assert seen[:3] == [[1.0, 0.5]] * 3
    assert seen[3:] == [[pytest.approx(0.1), pytest.approx(0.05)]] * 2


def test_piecewise_constant_without_boundaries_is_constant() -> None:
    opt = sgd(1.0)
    assert lrs_per_step(opt, piecewise_constant(opt, [], [0.2]), 4) == [[0.2]] * 4


SCHEDULE_FACTORIES: dict[str, Callable[[torch.optim.Optimizer], LRScheduler]] = {
    "exponential": lambda opt: exponential_decay(opt, 4, 0.7),
    "exponential_staircase": lambda opt: exponential_decay(opt, 4, 0.7, staircase=True),
    "power": lambda opt: power_decay(opt, 3, 1.5),
    "piecewise": lambda opt: piecewise_constant(opt, [5, 12, 15], [0.5, 0.2, 0.1, 0.05]),
}


@pytest.mark.parametrize("name", SCHEDULE_FACTORIES)
def test_scheduler_state_dict_resumes_identically(name: str) -> None:
    make = SCHEDULE_FACTORIES[name]
    opt = sgd(0.5, 0.1)
    sched = make(opt)
    lrs_per_step(opt, sched, 10)
    opt_state, sched_state = opt.state_dict(), sched.state_dict()
    uninterrupted = lrs_per_step(opt, sched, 10)

    resumed_opt = sgd(0.5, 0.1)
    resumed_sched = make(resumed_opt)
    resumed_opt.load_state_dict(opt_state)
    resumed_sched.load_state_dict(sched_state)
    assert lrs_per_step(resumed_opt, resumed_sched, 10) == uninterrupted


def test_performance_schedule_cuts_the_lr_on_a_plateau() -> None:
    opt = sgd(1.0)
    sched = performance_schedule(opt, factor=0.5, patience=2)
    assert isinstance(sched, ReduceLROnPlateau)
    lrs = []
    for val_loss in [1.0, 0.8, 0.8, 0.8, 0.8, 0.7, 0.7, 0.7, 0.7]:
        sched.step(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    # best 0.8 at epoch 1; epochs 2, 3 tolerated, epoch 4 cuts; 0.7 improves; epochs 6, 7 tolerated, 8 cuts
    assert lrs == [1.0, 1.0, 1.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.25]


def test_performance_schedule_max_mode_and_floor() -> None:
    opt = sgd(1.0)
    sched = performance_schedule(opt, mode="max", factor=0.1, patience=0, min_lr=0.05)
    for accuracy in [0.5, 0.4, 0.4, 0.4]:
        sched.step(accuracy)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)


def test_registry_names_intervals_and_builders() -> None:
    assert set(SCHEDULES) == {"exponential", "power", "piecewise_constant", "performance"}
    assert dict(SCHEDULE_INTERVAL) == {
        "exponential": "step",
        "power": "step",
        "piecewise_constant": "step",
        "performance": "epoch",
    }
    assert [name for name, spec in SCHEDULES.items() if spec.needs_metric] == ["performance"]
    with pytest.raises(TypeError):
        SCHEDULE_INTERVAL["exponential"] = "epoch"  # type: ignore[index]


def test_build_schedule_matches_the_functions() -> None:
    opt = sgd(1.0)
    by_name = lrs_per_step(opt, build_schedule("Exponential", opt, decay_steps=3, decay_rate=0.5), 7)
    opt = sgd(1.0)
    direct = lrs_per_step(opt, exponential_decay(opt, 3, 0.5), 7)
    assert by_name == direct
    assert isinstance(build_schedule("performance", sgd(1.0), patience=1), ReduceLROnPlateau)
    piecewise = build_schedule("piecewise_constant", sgd(1.0), boundaries=[1], values=[0.1, 0.2])
    assert isinstance(piecewise, LRScheduler)


def test_build_schedule_errors() -> None:
    with pytest.raises(ValueError, match=r"Unknown learning-rate schedule 'pwer'\. Did you mean 'power'\?"):
        build_schedule("pwer", sgd(1.0), decay_steps=3)
    with pytest.raises(
        TypeError, match=r"does not accept keyword 'decay_step' \(did you mean 'decay_steps'\?\)"
    ):
        build_schedule("power", sgd(1.0), decay_step=3)
    with pytest.raises(TypeError, match="`name` must be a string"):
        build_schedule(None, sgd(1.0))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda o: exponential_decay(o, 0, 0.5), ValueError, "`decay_steps` must be > 0"),
        (lambda o: exponential_decay(o, 10, 0.0), ValueError, "`decay_rate` must be > 0"),
        (lambda o: exponential_decay(o, 10, -0.5), ValueError, "`decay_rate` must be > 0"),
        (
            lambda o: exponential_decay(o, 10, 0.5, staircase="yes"),
            TypeError,
            "`staircase` must be a bool, got str 'yes'",
        ),
        (
            lambda o: exponential_decay(object(), 10, 0.5),
            TypeError,
            "`optimizer` must be a torch.optim.Optimizer",
        ),
        (lambda o: power_decay(o, -1), ValueError, "`decay_steps` must be > 0"),
        (lambda o: power_decay(o, 10, power=-1.0), ValueError, "`power` must be >= 0"),
        (lambda o: piecewise_constant(o, [5, 5], [1.0, 0.5, 0.1]), ValueError, "strictly increasing"),
        (lambda o: piecewise_constant(o, [5, 3], [1.0, 0.5, 0.1]), ValueError, "strictly increasing"),
        (
            lambda o: piecewise_constant(o, [2.5], [1.0, 0.5]),
            TypeError,
            r"`boundaries\[0\]` must be an integer",
        ),
        (
            lambda o: piecewise_constant(o, [5], [1.0]),
            ValueError,
            "len\\(boundaries\\) \\+ 1 = 2 entries, got 1",
        ),
        (lambda o: piecewise_constant(o, [5], [1.0, 0.0]), ValueError, r"`values\[1\]` must be > 0"),
        (lambda o: piecewise_constant(o, 5, [1.0, 0.1]), TypeError, "`boundaries` must be a sequence"),
        (lambda o: performance_schedule(o, factor=1.0), ValueError, "`factor` must be < 1"),
        (lambda o: performance_schedule(o, factor=0.0), ValueError, "`factor` must be > 0"),
        (lambda o: performance_schedule(o, patience=-1), ValueError, "`patience` must be >= 0"),
        (lambda o: performance_schedule(o, mode="mid"), ValueError, "`mode` must be one of"),
        (lambda o: performance_schedule(o, min_lr=-1.0), ValueError, "`min_lr` must be >= 0"),
    ],
)
def test_bad_arguments_raise_with_the_argument_name(
    make: Callable[[torch.optim.Optimizer], object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make(sgd(1.0))


def test_exponential_decay_matches_tf_formula_at_fractional_steps() -> None:
    # decay_steps need not be an integer (TF casts it to float)
    opt = sgd(2.0)
    seen = lrs_per_step(opt, exponential_decay(opt, decay_steps=2.5, decay_rate=0.9), 6)
    assert [lr for (lr,) in seen] == pytest.approx([2.0 * 0.9 ** (t / 2.5) for t in range(6)], rel=1e-12)
    assert math.isclose(seen[5][0], 2.0 * 0.81)
