"""Class paths and specs without a Trainer: the trusted-packages rule, mapping checks, optimizers and schedules by
name / mapping / callable, networks' JSON-able config, and the JSON round trip of what goes into hparams."""

from __future__ import annotations

import functools
import json
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, ReduceLROnPlateau, StepLR

from lightning_dnn._specs import (
    check_class_spec,
    describe_callable,
    import_class,
    network_config,
    network_spec,
    resolve_net,
    resolve_optimizer,
    resolve_schedule,
)
from lightning_dnn.nn import MLP


def params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(3))]


# ------------------------------------------------------------------------------------------ trusted packages
def test_class_path_of_a_trusted_package_is_imported() -> None:
    cls = import_class("optimizer", "torch.distributed.optim.ZeroRedundancyOptimizer", Optimizer)
    assert cls.__name__ == "ZeroRedundancyOptimizer" and "torch.distributed.optim" in sys.modules
    assert import_class("net", "lightning_dnn.nn.MLP", nn.Module) is MLP  # a re-export resolves too
    assert import_class("net", "torch.nn.Linear", nn.Module) is nn.Linear


@pytest.fixture
def untrusted_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A package on sys.path whose import leaves a marker file: importing it would run its code."""
    package = tmp_path / "not_trusted_pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from torch import nn
            Path({str(tmp_path / "imported")!r}).touch()

            class Net(nn.Linear):
                def __init__(self, width: int = 2) -> None:
                    super().__init__(width, width)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / "imported"
    for name in [n for n in sys.modules if n.split(".")[0] == "not_trusted_pkg"]:
        del sys.modules[name]


def test_untrusted_module_is_refused_and_not_imported(untrusted_package: Path) -> None:
    with pytest.raises(
        ValueError, match=r"`net\['class_path'\]`='not_trusted_pkg.Net' does not resolve.*import its"
    ):
        import_class("net", "not_trusted_pkg.Net", nn.Module)
    with pytest.raises(ValueError, match="import its module first"):
        resolve_net({"class_path": "not_trusted_pkg.sub.Net", "init_args": {}})
    assert "not_trusted_pkg" not in sys.modules and not untrusted_package.exists()

    # once the user imported it, its classes may be named
    __import__("not_trusted_pkg")
    net, spec = resolve_net({"class_path": "not_trusted_pkg.Net", "init_args": {"width": 3}})
    assert type(net).__name__ == "Net" and net.in_features == 3
    assert spec == {"class_path": "not_trusted_pkg.Net", "init_args": {"width": 3}}


@pytest.mark.parametrize(
    ("path", "error", "match"),
    [
        ("SGD", ValueError, r"must be a dotted path 'package.module.Class', got 'SGD'"),
        (3, ValueError, "must be a dotted path"),
        ("torch.optim.NoSuchOptimizer", ValueError, "does not resolve to a class"),
        ("torch.nn.Linear", TypeError, r"must name a subclass of Optimizer, got <class 'torch.nn.*Linear'>"),
        ("torch.optim.sgd.sgd", TypeError, "must name a subclass of Optimizer"),  # a function
    ],
)
def test_bad_class_paths_are_explained(path: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        import_class("optimizer", path, Optimizer)


@pytest.mark.parametrize("arg", ["net", "optimizer", "lr_schedule"])
def test_mapping_with_wrong_keys_names_the_argument(arg: str) -> None:
    spec = {"class_path": "torch.optim.SGD", "init_arg": {"lr": 0.1}}
    with pytest.raises(ValueError, match=rf"`{arg}` mapping has unknown key\(s\) \['init_arg'\]"):
        check_class_spec(arg, spec)
    with pytest.raises(TypeError, match=rf"`{arg}\['init_args'\]` must be a mapping, got list"):
        check_class_spec(arg, {"class_path": "torch.optim.SGD", "init_args": [0.1]})


def test_resolvers_check_their_mappings() -> None:
    with pytest.raises(ValueError, match=r"`net` mapping has unknown key\(s\) \['args'\]"):
        resolve_net({"class_path": "torch.nn.Linear", "args": {}})
    with pytest.raises(ValueError, match=r"`optimizer` mapping has unknown key\(s\) \['lr'\]"):
        resolve_optimizer({"class_path": "torch.optim.SGD", "lr": 0.1}, 1e-3, {})
    with pytest.raises(ValueError, match=r"`lr_schedule` mapping has unknown key\(s\) \['gamma'\]"):
        resolve_schedule({"class_path": "torch.optim.lr_scheduler.StepLR", "gamma": 0.5})
    with pytest.raises(ValueError, match="either 'name' or 'class_path', not both"):
        resolve_schedule({"name": "power", "class_path": "torch.optim.lr_scheduler.StepLR"})


# ------------------------------------------------------------------------------------------------ optimizers
def test_optimizer_by_name_callable_and_mapping_builds_the_right_optimizer() -> None:
    factory, spec = resolve_optimizer("nesterov", 0.05, {"weight_decay": 1e-4})
    assert factory is not None
    opt = factory(params())
    assert type(opt) is torch.optim.SGD and spec == "nesterov"
    assert (opt.defaults["lr"], opt.defaults["momentum"], opt.defaults["nesterov"]) == (0.05, 0.9, True)
    assert opt.defaults["weight_decay"] == 1e-4

    factory, spec = resolve_optimizer(functools.partial(torch.optim.Adam, lr=0.002), 1.0, {})
    assert factory is not None
    opt = factory(params())
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["lr"] == 0.002
    assert spec == {"class_path": "torch.optim.adam.Adam", "init_args": {"lr": 0.002}}

    mapping = {"class_path": "torch.optim.RMSprop", "init_args": {"lr": 0.01, "alpha": 0.9}}
    factory, spec = resolve_optimizer(mapping, 1.0, {})
    assert factory is not None
    opt = factory(params())
    assert type(opt) is torch.optim.RMSprop and opt.param_groups[0]["lr"] == 0.01 and spec == mapping

    factory, spec = resolve_optimizer(lambda ps: torch.optim.Adagrad(ps, lr=0.3), 1.0, {})
    assert factory is not None and spec is None  # built, but a lambda cannot be described
    assert factory(params()).param_groups[0]["lr"] == 0.3
    assert resolve_optimizer(None, 1.0, {}) == (None, None)


def test_bad_optimizers_fail_now() -> None:
    with pytest.raises(ValueError, match=r"Unknown optimizer 'adamm'\. Did you mean 'adam'"):
        resolve_optimizer("adamm", 0.1, {})
    with pytest.raises(
        TypeError, match=r"`optimizer_kwargs` for optimizer 'momentum'.*did you mean 'momentum'"
    ):
        resolve_optimizer("momentum", 0.1, {"momentun": 0.5})
    with pytest.raises(ValueError, match="only applies to an optimizer given by name"):
        resolve_optimizer(torch.optim.SGD, 0.1, {"momentum": 0.9})
    with pytest.raises(TypeError, match="`optimizer` must be an optimizer name"):
        resolve_optimizer(3, 0.1, {})
    factory, _ = resolve_optimizer(lambda ps: "not an optimizer", 0.1, {})
    assert factory is not None
    with pytest.raises(TypeError, match=r"must return a torch\.optim\.Optimizer, got str"):
        factory(params())


def test_lightning_cli_callables_are_described() -> None:
    def instantiator(cls: type, *args: Any, **kwargs: Any) -> Any:  # jsonargparse's shape
        return cls(*args, **kwargs)

    instantiator.__module__ = "jsonargparse._typehints"
    cli_callable = functools.partial(instantiator, torch.optim.SGD, lr=0.1)
    assert describe_callable(cli_callable) == {"class_path": "torch.optim.sgd.SGD", "init_args": {"lr": 0.1}}
    assert describe_callable(torch.optim.SGD) == {"class_path": "torch.optim.sgd.SGD", "init_args": {}}
    assert describe_callable(functools.partial(torch.optim.SGD, lr=float("nan"))) is None  # not JSON-able
    assert describe_callable(functools.partial(torch.optim.SGD, params(), lr=0.1)) is None  # positional args


# ------------------------------------------------------------------------------------------------- schedules
def step_lrs(setup: Any, steps: int, lr: float = 0.1, metric: float | None = None) -> list[float]:
    opt = torch.optim.SGD(params(), lr=lr)
    scheduler = setup.build(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step(metric) if metric is not None else scheduler.step()
    return lrs


def test_schedule_by_name_follows_the_closed_form() -> None:
    setup, spec = resolve_schedule({"name": "power", "decay_steps": 2, "power": 1.0})
    assert setup is not None and setup.lightning == {"interval": "step"}
    assert spec == {"name": "power", "decay_steps": 2, "power": 1.0}
    assert step_lrs(setup, 5) == pytest.approx([0.1 / (1 + t / 2) for t in range(5)], rel=1e-12)

    setup, spec = resolve_schedule("performance")
    assert setup is not None and setup.lightning == {"interval": "epoch"} and spec == "performance"
    assert isinstance(setup.build(torch.optim.SGD(params(), lr=0.1)), ReduceLROnPlateau)


def test_schedule_by_class_path_mapping_and_callable() -> None:
    mapping = {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 2, "gamma": 0.5},
        "interval": "step",
        "frequency": 1,
    }
    setup, spec = resolve_schedule(mapping)
    assert setup is not None and setup.lightning == {"interval": "step", "frequency": 1} and spec == mapping
    assert step_lrs(setup, 5) == pytest.approx([0.1, 0.1, 0.05, 0.05, 0.025])

    step_lr = functools.partial(StepLR, step_size=1, gamma=0.1)
    setup, spec = resolve_schedule(step_lr)
    assert setup is not None and setup.lightning == {"interval": "epoch"}
    assert spec == {
        "class_path": "torch.optim.lr_scheduler.StepLR",
        "init_args": {"step_size": 1, "gamma": 0.1},
    }
    assert step_lrs(setup, 3) == pytest.approx([0.1, 0.01, 0.001])

    setup, spec = resolve_schedule(lambda opt: LambdaLR(opt, lambda t: 0.5**t))
    assert setup is not None and spec is None
    assert step_lrs(setup, 3) == pytest.approx([0.1, 0.05, 0.025])
    setup, _ = resolve_schedule(lambda opt: 3)
    assert setup is not None
    with pytest.raises(TypeError, match="must return a torch LR scheduler, got int"):
        setup.build(torch.optim.SGD(params(), lr=0.1))


@pytest.mark.parametrize(
    ("schedule", "error", "match"),
    [
        ("exponentail", ValueError, r"Did you mean 'exponential'"),
        ("exponential", TypeError, r"`lr_schedule`: .*decay_steps"),
        (
            {"name": "exponential", "decay_steps": 4, "decay_rat": 0.5},
            TypeError,
            r"did you mean 'decay_rate'",
        ),
        ({"decay_steps": 10, "interval": "step"}, ValueError, r"needs a 'name'.*got keys \['decay_steps'\]"),
        ({"name": 3}, TypeError, r"`lr_schedule\['name'\]` must be a schedule name"),
        (
            {"name": "performance", "interval": "batch"},
            ValueError,
            r"`lr_schedule\['interval'\]` must be one of",
        ),
        ({"name": "performance", "frequency": 0}, ValueError, r"`lr_schedule\['frequency'\]` must be >= 1"),
        (
            {"name": "performance", "monitor": 3},
            TypeError,
            r"`lr_schedule\['monitor'\]` must be a metric name",
        ),
        (
            {"class_path": "torch.optim.SGD"},
            TypeError,
            r"must name a subclass of LRScheduler or ReduceLROnPlateau",
        ),
        (0.1, TypeError, r"`lr_schedule` must be None, a schedule name"),
    ],
)
def test_bad_schedules_fail_now(schedule: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        resolve_schedule(schedule)


# --------------------------------------------------------------------------------------------------- networks
class NoConfig(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(2, 2)


class BadConfig(NoConfig):
    config = property(lambda self: {"act": nn.ReLU()})


class ListConfig(NoConfig):
    config = property(lambda self: [1, 2])


def test_network_config_is_the_json_able_config_or_an_explained_error() -> None:
    net = MLP(4, (5,), 3, activation="relu")
    assert network_config(net) == net.config and network_config(net) is not net.config
    with pytest.raises(TypeError, match="NoConfig has no `config`"):
        network_config(NoConfig())
    with pytest.raises(TypeError, match=r"BadConfig\.config must be JSON-able"):
        network_config(BadConfig())
    with pytest.raises(TypeError, match=r"ListConfig\.config must be a mapping, got list"):
        network_config(ListConfig())
    with pytest.raises(
        TypeError, match=r"MLP\.config needs `activation` as a name"
    ):  # the network's own reason
        network_config(MLP(4, (5,), 3, activation=nn.ReLU()))


def test_network_spec_describes_only_what_a_checkpoint_can_rebuild() -> None:
    assert network_spec(MLP(4, (5,), 3)) == {
        "class_path": "lightning_dnn.nn.mlp.MLP",
        "init_args": MLP(4, (5,), 3).config,
    }
    assert network_spec(NoConfig()) is None and network_spec(BadConfig()) is None
    assert network_spec(MLP(4, (5,), 3, activation=nn.ReLU())) is None

    class Local(nn.Linear):  # defined in a function: no importable class path
        config = property(lambda self: {})

    assert network_spec(Local(2, 2)) is None
    with pytest.raises(TypeError, match=r"`net` must be a torch\.nn\.Module or a"):
        resolve_net("mlp")
    with pytest.raises(TypeError, match=r"this checkpoint does not store the network: pass it"):
        resolve_net(None)
    with pytest.raises(ValueError, match=r"needs a 'class_path'"):
        resolve_net({"init_args": {}})


# ---------------------------------------------------------------------------------------- JSON round trip
def test_what_goes_into_hparams_survives_a_json_round_trip() -> None:
    net, net_spec = resolve_net(MLP(6, (5, 4), 3, activation={"name": "leaky_relu", "negative_slope": 0.2}))
    _, opt_spec = resolve_optimizer(functools.partial(torch.optim.SGD, lr=0.1, momentum=0.5), 1.0, {})
    _, schedule_spec = resolve_schedule({"name": "exponential", "decay_steps": 3, "decay_rate": 0.5})
    hparams = {"net": net_spec, "optimizer": opt_spec, "lr_schedule": schedule_spec}
    reloaded = json.loads(json.dumps(hparams))
    assert reloaded == hparams

    rebuilt, rebuilt_spec = resolve_net(reloaded["net"])
    assert type(rebuilt) is MLP and rebuilt.config == net.config and rebuilt_spec == net_spec
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in net.parameters()]
    factory, again = resolve_optimizer(reloaded["optimizer"], 1.0, {})
    assert factory is not None and again == opt_spec
    opt = factory(params())
    assert type(opt) is torch.optim.SGD and (opt.defaults["lr"], opt.defaults["momentum"]) == (0.1, 0.5)
    setup, again = resolve_schedule(reloaded["lr_schedule"])
    assert setup is not None and again == schedule_spec
    assert step_lrs(setup, 4) == pytest.approx([0.1 * 0.5 ** (t / 3) for t in range(4)], rel=1e-12)
