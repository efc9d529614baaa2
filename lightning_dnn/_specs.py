"""Class paths and specs: turn JSON-able descriptions into networks, optimizers and schedules, and back.

The ``{"class_path": ..., "init_args": ...}`` form is LightningCLI's. Only classes from :data:`TRUSTED_PACKAGES`
or from an already imported module are built, so a checkpoint's hyper-parameters never import arbitrary code.
Plain torch: no Lightning here (``DNNClassifier`` and the hub both build on it).
"""

from __future__ import annotations

import functools
import importlib
import json
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from lightning_dnn._checks import check_choice, check_int, check_number
from lightning_dnn.optim import SCHEDULE_INTERVAL, build_optimizer, build_schedule

__all__ = [
    "LIGHTNING_SCHEDULE_KEYS",
    "TRUSTED_PACKAGES",
    "NetSpec",
    "OptimizerFactory",
    "ScheduleFactory",
    "ScheduleSetup",
    "check_class_spec",
    "class_path",
    "describe_callable",
    "import_class",
    "is_jsonable",
    "network_config",
    "network_spec",
    "resolve_net",
    "resolve_optimizer",
    "resolve_optimizer_args",
    "resolve_schedule",
]

#: Packages whose classes a ``class_path`` may name even when not imported yet; any other class must already be
#: imported (as Lightning does for checkpoints, so that loading a checkpoint never imports arbitrary code).
TRUSTED_PACKAGES = ("lightning_dnn", "torch", "torchvision", "pytorch_lightning", "lightning")
#: Keys of a schedule mapping that configure how Lightning steps the scheduler rather than the scheduler itself.
LIGHTNING_SCHEDULE_KEYS = ("interval", "frequency", "monitor")

NetSpec = dict[str, Any]
#: ``params -> Optimizer`` (LightningCLI's ``OptimizerCallable``).
OptimizerFactory = Callable[[Iterable[Any]], Optimizer]
#: ``optimizer -> scheduler`` (LightningCLI's ``LRSchedulerCallable``).
ScheduleFactory = Callable[[Optimizer], Any]


class ScheduleSetup(NamedTuple):
    """A resolved ``lr_schedule``: how to build the scheduler and how Lightning steps it.

    Attributes:
        build: ``optimizer -> scheduler``.
        lightning: Lightning's ``lr_scheduler`` keys (``interval``, and ``frequency``/``monitor`` when given).
    """

    build: ScheduleFactory
    lightning: dict[str, Any]


# ----------------------------------------------------------------------------------------------- JSON, paths
def is_jsonable(value: Any) -> bool:
    """Whether ``json.dumps`` writes ``value`` (finite numbers only, as ``config.json`` needs).

    Example:
        >>> is_jsonable({"hidden": [300, 100]}), is_jsonable({"act": object()}), is_jsonable(float("nan"))
        (True, False, False)
    """
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def class_path(cls: type) -> str | None:
    """``"module.QualName"`` of a class, or None for a class defined inside a function (not importable).

    Example:
        >>> class_path(torch.optim.SGD)
        'torch.optim.sgd.SGD'
    """
    if "<locals>" in cls.__qualname__:
        return None
    return f"{cls.__module__}.{cls.__qualname__}"


def import_class(arg: str, path: Any, base: type | tuple[type, ...]) -> type:
    """Resolve ``"package.module.Class"`` to a subclass of ``base`` without importing untrusted code.

    A module is imported only when its top-level package is in :data:`TRUSTED_PACKAGES`; otherwise the class
    must come from a module that is already imported.

    Args:
        arg: the argument's name, for messages (``"net"``, ``"optimizer"``, ``"lr_schedule"``).
        path: the dotted class path.
        base: the class (or classes) the result must subclass.

    Returns:
        the class.

    Raises:
        ValueError: if ``path`` is not a dotted string, or names nothing trusted or already imported.
        TypeError: if it names something that is not a subclass of ``base``.

    Example:
        >>> import_class("optimizer", "torch.optim.SGD", Optimizer).__name__
        'SGD'
        >>> import_class("net", "some_unknown_package.Net", nn.Module)
        Traceback (most recent call last):
            ...
        ValueError: `net['class_path']`='some_unknown_package.Net' does not resolve to a class: only classes ...
    """
    if not isinstance(path, str) or "." not in path:
        raise ValueError(f"`{arg}['class_path']` must be a dotted path 'package.module.Class', got {path!r}")
    parts = path.split(".")
    trusted = parts[0] in TRUSTED_PACKAGES
    for i in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:i])
        if not trusted and module_name not in sys.modules:
            continue
        obj = _lookup(module_name, parts[i:])
        if obj is None:
            continue
        if isinstance(obj, type) and issubclass(obj, base):
            return obj
        raise TypeError(f"`{arg}['class_path']`={path!r} must name a subclass of {_names(base)}, got {obj!r}")
    raise ValueError(
        f"`{arg}['class_path']`={path!r} does not resolve to a class: only classes from "
        f"{', '.join(TRUSTED_PACKAGES)} or from an already imported module are built; import its module first"
    )


def _lookup(module_name: str, attrs: list[str]) -> Any:
    """``module_name.attr1.attr2...`` or None when the module or an attribute is missing."""
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError:
        return None
    for attr in attrs:
        obj = getattr(obj, attr, _MISSING)
        if obj is _MISSING:
            return None
    return obj


_MISSING = object()


def _names(base: type | tuple[type, ...]) -> str:
    return " or ".join(b.__name__ for b in (base if isinstance(base, tuple) else (base,)))


def check_class_spec(arg: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """Check a ``{"class_path", "init_args"}`` mapping's keys; return a copy of its ``init_args``.

    Raises:
        ValueError: for keys other than ``class_path`` and ``init_args`` (the message names ``arg``).
        TypeError: if ``init_args`` is not a mapping.

    Example:
        >>> check_class_spec("optimizer", {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.1}})
        {'lr': 0.1}
        >>> check_class_spec("optimizer", {"class_path": "torch.optim.SGD", "args": {}})
        Traceback (most recent call last):
            ...
        ValueError: `optimizer` mapping has unknown key(s) ['args']; expected 'class_path' and 'init_args'
    """
    unknown = sorted(set(spec) - {"class_path", "init_args"})
    if unknown:
        raise ValueError(
            f"`{arg}` mapping has unknown key(s) {unknown}; expected 'class_path' and 'init_args'"
        )
    init_args = spec.get("init_args") or {}
    if not isinstance(init_args, Mapping):
        raise TypeError(f"`{arg}['init_args']` must be a mapping, got {type(init_args).__name__}")
    return dict(init_args)


# --------------------------------------------------------------------------------------------------- networks
def network_config(net: nn.Module) -> dict[str, Any]:
    """Return a network's JSON-able constructor arguments: its ``config``, as a plain dict.

    The one reading of a network's config, shared by ``DNNClassifier``'s checkpoints (:func:`network_spec`) and
    the hub's ``config.json``. A network describes itself with a ``config`` property (and rebuilds with
    ``from_config``), as :class:`~lightning_dnn.nn.MLP` does.

    Raises:
        TypeError: if ``net`` has no ``config``, its ``config`` is not a mapping or not JSON-able; errors the
            ``config`` property raises itself (an MLP built with a module activation) propagate.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> network_config(MLP(4, (8,), 3))["hidden"]
        [8]
        >>> network_config(nn.Linear(2, 2))
        Traceback (most recent call last):
            ...
        TypeError: Linear has no `config` (its JSON-able constructor arguments) ...
    """
    name = type(net).__name__
    if not hasattr(type(net), "config") and "config" not in vars(net):
        raise TypeError(
            f"{name} has no `config` (its JSON-able constructor arguments) and cannot be described; "
            "give the class a `config` property and a `from_config` classmethod, as lightning_dnn.nn.MLP has"
        )
    raw: Any = net.config
    if not isinstance(raw, Mapping):
        raise TypeError(f"{name}.config must be a mapping, got {type(raw).__name__}")
    config = dict(raw)
    if not is_jsonable(config):
        raise TypeError(
            f"{name}.config must be JSON-able (finite numbers, strings, lists, dicts), got {config!r}"
        )
    return config


def network_spec(net: nn.Module) -> NetSpec | None:
    """``{"class_path", "init_args"}`` that rebuilds ``net`` (its class, :func:`network_config`), or None.

    None when the class is not importable by path (defined in a function) or the network has no JSON-able
    config.

    Example:
        >>> from lightning_dnn.nn import MLP
        >>> network_spec(MLP(4, (8,), 3))["class_path"], network_spec(nn.Linear(2, 2))
        ('lightning_dnn.nn.mlp.MLP', None)
    """
    path = class_path(type(net))
    if path is None:
        return None
    try:
        config = network_config(net)
    except (TypeError, ValueError):  # no config, or e.g. an MLP built with a module activation
        return None
    return {"class_path": path, "init_args": config}


def resolve_net(net: Any) -> tuple[nn.Module, NetSpec | None]:
    """Return the network and its JSON-able ``{"class_path", "init_args"}`` description (None if it has none).

    Args:
        net: an ``nn.Module`` or a ``{"class_path", "init_args"}`` mapping naming one (built with
            ``cls(**init_args)``).

    Raises:
        TypeError: if ``net`` is neither, or the class path names something that is not an ``nn.Module``.
        ValueError: for a mapping without ``class_path``, with unknown keys, or naming an untrusted class.

    Example:
        >>> net, spec = resolve_net({"class_path": "torch.nn.Linear", "init_args": {"in_features": 2,
        ...                                                                         "out_features": 3}})
        >>> type(net).__name__, spec["init_args"]["out_features"]
        ('Linear', 3)
    """
    if isinstance(net, Mapping):
        if "class_path" not in net:
            raise ValueError(
                f"`net` given as a mapping needs a 'class_path' (and 'init_args'), got keys {sorted(net)}"
            )
        init_args = check_class_spec("net", net)
        module = import_class("net", net["class_path"], nn.Module)(**init_args)
        spec = {"class_path": net["class_path"], "init_args": init_args}
        return module, spec if is_jsonable(spec) else None
    if not isinstance(net, nn.Module):
        hint = (
            " (this checkpoint does not store the network: pass it, "
            "DNNClassifier.load_from_checkpoint(path, net=MyNet()))"
            if net is None
            else ""
        )
        raise TypeError(
            f"`net` must be a torch.nn.Module or a {{'class_path': ..., 'init_args': ...}} mapping, "
            f"got {type(net).__name__}{hint}"
        )
    return net, network_spec(net)


# ------------------------------------------------------------------------------------------------- optimizers
def _dummy_params() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(1))]


def resolve_optimizer_args(
    optimizer: Any, lr: float, optimizer_kwargs: Mapping[str, Any] | None
) -> tuple[float, dict[str, Any], OptimizerFactory | None, str | dict[str, Any] | None]:
    """Check a module's ``lr``/``optimizer_kwargs`` arguments and resolve ``optimizer`` (:func:`resolve_optimizer`).

    Returns:
        ``(lr, optimizer_kwargs as a new dict, factory, JSON-able description)``.

    Raises:
        ValueError: ``lr`` is not > 0, or ``optimizer_kwargs`` holds ``"lr"``.
        TypeError: ``optimizer_kwargs`` is not a mapping.

    Example:
        >>> lr, kwargs, factory, spec = resolve_optimizer_args("momentum", 0.1, None)
        >>> lr, kwargs, spec
        (0.1, {}, 'momentum')
    """
    lr = check_number("lr", lr, low=0.0, low_inclusive=False)
    if optimizer_kwargs is not None and not isinstance(optimizer_kwargs, Mapping):
        raise TypeError(
            f"`optimizer_kwargs` must be a mapping of keyword arguments or None, "
            f"got {type(optimizer_kwargs).__name__} {optimizer_kwargs!r}"
        )
    kwargs = dict(optimizer_kwargs or {})
    if "lr" in kwargs:
        raise ValueError("`optimizer_kwargs` must not hold 'lr'; pass the learning rate as `lr=`")
    factory, spec = resolve_optimizer(optimizer, lr, kwargs)
    return lr, kwargs, factory, spec


def resolve_optimizer(
    optimizer: Any, lr: float, kwargs: Mapping[str, Any]
) -> tuple[OptimizerFactory | None, str | dict[str, Any] | None]:
    """Return a factory ``params -> Optimizer`` and a JSON-able description of it (None when it has none).

    Args:
        optimizer: None; a name for :func:`lightning_dnn.optim.build_optimizer` (built with ``lr`` and
            ``kwargs``); a ``{"class_path", "init_args"}`` mapping naming a ``torch.optim.Optimizer`` class; or a
            callable ``params -> Optimizer`` (described when it is a class or a ``functools.partial`` of one).
        lr: the learning rate of an optimizer given by name.
        kwargs: the keyword arguments of an optimizer given by name; must be empty otherwise.

    Raises:
        ValueError: for an unknown name, ``kwargs`` with a non-name optimizer, a bad mapping.
        TypeError: for keyword arguments the optimizer rejects, or an ``optimizer`` of the wrong type.

    Example:
        >>> factory, spec = resolve_optimizer({"class_path": "torch.optim.SGD", "init_args": {"lr": 0.5}}, 1e-3, {})
        >>> factory([nn.Parameter(torch.zeros(1))]).defaults["lr"], spec["class_path"]
        (0.5, 'torch.optim.SGD')
        >>> factory, spec = resolve_optimizer("momentum", 0.01, {})
        >>> type(factory([nn.Parameter(torch.zeros(1))])).__name__, spec
        ('SGD', 'momentum')
    """
    if optimizer is None:
        return None, None
    if isinstance(optimizer, str):
        factory: OptimizerFactory = functools.partial(_build_named, optimizer, lr, dict(kwargs))
        try:  # validates the name (with close matches) and the keyword arguments now
            factory(_dummy_params())
        except TypeError as err:
            raise TypeError(f"`optimizer_kwargs` for optimizer {optimizer!r}: {err}") from None
        return factory, optimizer
    if kwargs:
        raise ValueError(
            "`optimizer_kwargs` only applies to an optimizer given by name; put the arguments in the callable "
            "(functools.partial(torch.optim.SGD, momentum=0.9)) or its 'init_args'"
        )
    if isinstance(optimizer, Mapping):
        init_args = check_class_spec("optimizer", optimizer)
        cls = import_class("optimizer", optimizer.get("class_path"), Optimizer)
        factory = functools.partial(cls, **init_args)
        factory(_dummy_params())
        spec = {"class_path": optimizer["class_path"], "init_args": init_args}
        return factory, spec if is_jsonable(spec) else None
    if not callable(optimizer):
        raise TypeError(
            "`optimizer` must be an optimizer name, a {'class_path': ..., 'init_args': ...} mapping or a callable "
            f"params -> torch.optim.Optimizer, got {type(optimizer).__name__} {optimizer!r}"
        )
    return functools.partial(_call_optimizer, optimizer), describe_callable(optimizer)


def _build_named(name: str, lr: float, kwargs: dict[str, Any], params: Iterable[Any]) -> Optimizer:
    return build_optimizer(name, params, lr, **kwargs)


def _call_optimizer(factory: Callable[[Iterable[Any]], Any], params: Iterable[Any]) -> Optimizer:
    optimizer = factory(params)
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"`optimizer` callable must return a torch.optim.Optimizer, got {type(optimizer).__name__}"
        )
    return optimizer


def describe_callable(obj: Any) -> dict[str, Any] | None:
    """``{"class_path", "init_args"}`` for a class or a ``functools.partial`` of one with JSON-able keywords.

    LightningCLI's callables (jsonargparse's ``partial(instantiator, ..., cls, **init_args)``) are described too;
    anything else (a lambda, a function) gives None.

    Example:
        >>> describe_callable(functools.partial(torch.optim.SGD, lr=0.1))
        {'class_path': 'torch.optim.sgd.SGD', 'init_args': {'lr': 0.1}}
        >>> describe_callable(lambda params: torch.optim.SGD(params, lr=0.1)) is None
        True
    """
    cls: Any = None
    init_args: dict[str, Any] = {}
    if isinstance(obj, type):
        cls = obj
    elif isinstance(obj, functools.partial):
        init_args = dict(obj.keywords)
        if isinstance(obj.func, type) and not obj.args:
            cls = obj.func
        elif getattr(obj.func, "__module__", "").startswith("jsonargparse") and obj.args:
            cls = obj.args[-1] if isinstance(obj.args[-1], type) else None
    path = None if cls is None else class_path(cls)
    if path is None:
        return None
    spec = {"class_path": path, "init_args": init_args}
    return spec if is_jsonable(spec) else None


# -------------------------------------------------------------------------------------------------- schedules
def resolve_schedule(lr_schedule: Any) -> tuple[ScheduleSetup | None, str | dict[str, Any] | None]:
    """Return how to build and step the schedule, and a JSON-able description of it (None when it has none).

    Args:
        lr_schedule: None; a name for :func:`lightning_dnn.optim.build_schedule`; a mapping ``{"name": ...,
            **kwargs}`` or ``{"class_path": ..., "init_args": ...}`` (a torch scheduler class), either optionally
            with Lightning's ``interval``/``frequency``/``monitor``; or a callable ``optimizer -> scheduler``.
            Named schedules step at their natural interval (:data:`~lightning_dnn.optim.SCHEDULE_INTERVAL`),
            others per epoch unless ``interval`` says otherwise.

    Raises:
        ValueError: for an unknown name, a mapping with neither or both of ``name``/``class_path``, bad
            Lightning keys or out-of-range schedule arguments.
        TypeError: for keyword arguments the schedule rejects or an ``lr_schedule`` of the wrong type.

    Example:
        >>> setup, spec = resolve_schedule({"name": "exponential", "decay_steps": 10, "decay_rate": 0.5})
        >>> setup.lightning, spec["name"]
        ({'interval': 'step'}, 'exponential')
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
        >>> type(setup.build(opt)).__name__
        'LambdaLR'
    """
    if lr_schedule is None:
        return None, None
    if isinstance(lr_schedule, str):
        options: dict[str, Any] = {"name": lr_schedule}
        spec: str | dict[str, Any] = lr_schedule
    elif isinstance(lr_schedule, Mapping):
        options = dict(lr_schedule)
        spec = dict(lr_schedule)
    elif callable(lr_schedule):
        setup = ScheduleSetup(functools.partial(_call_schedule, lr_schedule), {"interval": "epoch"})
        return setup, describe_callable(lr_schedule)
    else:
        raise TypeError(
            "`lr_schedule` must be None, a schedule name, a mapping ({'name': ..., **kwargs} or "
            "{'class_path': ..., 'init_args': ...}) or a callable optimizer -> scheduler, "
            f"got {type(lr_schedule).__name__} {lr_schedule!r}"
        )
    lightning = _pop_lightning_keys(options)
    build, interval = _schedule_factory(options)
    lightning.setdefault("interval", interval)
    dummy = torch.optim.SGD(_dummy_params(), lr=1.0)
    try:  # validates the name (with close matches) and the keyword arguments now
        build(dummy)
    except TypeError as err:
        raise TypeError(f"`lr_schedule`: {err}") from None
    return ScheduleSetup(build, lightning), spec if is_jsonable(spec) else None


def _pop_lightning_keys(options: dict[str, Any]) -> dict[str, Any]:
    """Remove and check Lightning's ``interval``/``frequency``/``monitor`` keys of a schedule mapping."""
    config = {k: options.pop(k) for k in LIGHTNING_SCHEDULE_KEYS if k in options}
    if "interval" in config:
        check_choice("lr_schedule['interval']", config["interval"], ("step", "epoch"))
    if "frequency" in config:
        check_int("lr_schedule['frequency']", config["frequency"], low=1)
    if "monitor" in config and not isinstance(config["monitor"], str):
        raise TypeError(f"`lr_schedule['monitor']` must be a metric name, got {config['monitor']!r}")
    return config


def _schedule_factory(options: dict[str, Any]) -> tuple[ScheduleFactory, str]:
    """The factory of a ``{"name", **kwargs}`` or ``{"class_path", "init_args"}`` mapping, and its interval."""
    if "class_path" in options:
        if "name" in options:
            raise ValueError("`lr_schedule` mapping takes either 'name' or 'class_path', not both")
        init_args = check_class_spec("lr_schedule", options)
        cls = import_class("lr_schedule", options["class_path"], (LRScheduler, ReduceLROnPlateau))
        return functools.partial(_build_class_schedule, cls, init_args), "epoch"
    if "name" in options:
        kwargs = dict(options)
        name = kwargs.pop("name")
        if not isinstance(name, str):
            raise TypeError(
                f"`lr_schedule['name']` must be a schedule name, got {type(name).__name__} {name!r}"
            )
        interval = SCHEDULE_INTERVAL.get(name.strip().lower(), "epoch")
        return functools.partial(_build_named_schedule, name, kwargs), interval
    raise ValueError(
        "`lr_schedule` mapping needs a 'name' (a schedule name and its keyword arguments) or a 'class_path' "
        f"(a torch scheduler class and its 'init_args'), got keys {sorted(options)}"
    )


def _build_named_schedule(name: str, kwargs: dict[str, Any], optimizer: Optimizer) -> Any:
    return build_schedule(name, optimizer, **kwargs)


def _build_class_schedule(cls: type, kwargs: dict[str, Any], optimizer: Optimizer) -> Any:
    return cls(optimizer, **kwargs)


def _call_schedule(factory: ScheduleFactory, optimizer: Optimizer) -> Any:
    scheduler = factory(optimizer)
    if not isinstance(scheduler, LRScheduler | ReduceLROnPlateau):
        raise TypeError(
            f"`lr_schedule` callable must return a torch LR scheduler, got {type(scheduler).__name__}"
        )
    return scheduler
