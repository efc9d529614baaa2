"""Both Lightning package names, ``pytorch_lightning`` and ``lightning.pytorch``: the one module that knows them.

Which packages are used is decided once, at import (:data:`PACKAGES`); everything else in lightning_dnn imports
Lightning through this module, so a package the user does not have is never imported. See
``docs/LIGHTNING_PACKAGES.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

# lightning_utilities' rank-zero functions log to the logger that the last imported Lightning package installed
# (`pytorch_lightning.utilities.rank_zero` or `lightning.pytorch.utilities.rank_zero`); both have a console handler.
from lightning_utilities.core.rank_zero import rank_zero_info, rank_zero_warn

__all__ = [
    "ENV_VAR",
    "PACKAGES",
    "PRIMARY",
    "Callback",
    "LightningDataModule",
    "LightningModule",
    "api",
    "check_trainer",
    "combined_callback_base",
    "is_data_module",
    "is_lightning_module",
    "is_overridden",
    "is_strategy",
    "package_of",
    "rank_zero_info",
    "rank_zero_warn",
    "select_packages",
]

#: The environment variable that restricts lightning_dnn to one package: ``lightning`` or ``pytorch_lightning``.
ENV_VAR = "LIGHTNING_DNN_PACKAGE"
_NAMES = ("pytorch_lightning", "lightning")
_API = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}
_PIP = {"pytorch_lightning": "pytorch-lightning", "lightning": "lightning"}
_ROOTS = {"pytorch_lightning": "pytorch_lightning", "lightning_fabric": "pytorch_lightning", "lightning": "lightning"}


def _installed(name: str) -> bool:
    try:  # a package blocked by `sys.modules[name] = None` or by an import hook counts as absent
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def select_packages(requested: str | None, installed: Callable[[str], bool] = _installed) -> tuple[str, ...]:
    """The Lightning packages to use, the primary one first: ``requested`` alone, else every installed one.

    Args:
        requested: the value of ``LIGHTNING_DNN_PACKAGE`` (``None`` or empty: not set).
        installed: whether a package can be imported (by default, without importing it).

    Returns:
        ``("pytorch_lightning", "lightning")`` with both installed, or the one package installed or requested.

    Raises:
        ValueError: ``requested`` names neither package.
        ImportError: the requested package, or both, are not installed.

    Example:
        >>> select_packages(None, lambda name: True)
        ('pytorch_lightning', 'lightning')
        >>> select_packages("lightning", lambda name: True)
        ('lightning',)
        >>> select_packages(None, lambda name: name == "lightning")
        ('lightning',)
    """
    name = (requested or "").strip()
    if name:
        if name not in _NAMES:
            raise ValueError(f"{ENV_VAR} must be 'pytorch_lightning' or 'lightning' (or unset), got {requested!r}")
        if not installed(name):
            raise ImportError(
                f"{ENV_VAR}={name}, but {name} is not installed: `pip install {_PIP[name]}`, or unset {ENV_VAR}."
            )
        return (name,)
    found = tuple(n for n in _NAMES if installed(n))
    if not found:
        raise ImportError("lightning_dnn needs PyTorch Lightning: `pip install pytorch-lightning` or `pip install lightning`.")
    return found


#: The packages in use, the primary one (the CLI's, and the first base class) first.
PACKAGES: tuple[str, ...] = select_packages(os.environ.get(ENV_VAR))
PRIMARY: str = PACKAGES[0]


def api(path: str = "", package: str | None = None) -> types.ModuleType:
    """Import ``path`` of a package's trainer API: ``pytorch_lightning.<path>`` or ``lightning.pytorch.<path>``.

    Args:
        path: a dotted submodule (``"strategies"``, ``"cli"``); empty for the top level.
        package: ``"pytorch_lightning"`` or ``"lightning"``; ``None`` for :data:`PRIMARY`.

    Returns:
        the imported module.

    Example:
        >>> api("strategies").__name__ in ("pytorch_lightning.strategies", "lightning.pytorch.strategies")
        True
    """
    name = _API[package or PRIMARY]
    return importlib.import_module(f"{name}.{path}" if path else name)


_TYPE_PACKAGE: dict[type, str | None] = {}


def package_of(obj: object) -> str | None:
    """The package an object's class comes from (``"pytorch_lightning"``, ``"lightning"``), else ``None``.

    The first class of the MRO defined in a Lightning package decides: a Trainer subclass defined in user code
    comes from its base's package. lightning_dnn's own classes derive from both packages and report the primary.

    Example:
        >>> import pytorch_lightning
        >>> package_of(pytorch_lightning.Trainer), package_of(3)
        ('pytorch_lightning', None)
    """
    cls = obj if isinstance(obj, type) else obj.__class__  # __class__ sees through weakref proxies
    try:
        return _TYPE_PACKAGE[cls]
    except KeyError:
        pass
    found = next((p for k in cls.__mro__ if (p := _ROOTS.get(k.__module__.partition(".")[0])) is not None), None)
    _TYPE_PACKAGE[cls] = found
    return found


def _mix_message(who: str, package: str) -> str:
    if os.environ.get(ENV_VAR, "").strip():
        reason = f"{ENV_VAR}={os.environ[ENV_VAR].strip()}"
        fix = f"set {ENV_VAR}={package} or unset it (with both packages installed, lightning_dnn works with either)"
    else:
        reason = f"{package} was not importable when lightning_dnn was imported"
        fix = f"import lightning_dnn where {package} is installed"
    using = " and ".join(f"`{_API[p]}`" for p in PACKAGES)
    return (
        f"{who}: the Trainer comes from `{_API[package]}`, but lightning_dnn was set up for {using} only "
        f"({reason}). Use a `{_API[PRIMARY]}.Trainer`, or {fix}."
    )


def check_trainer(trainer: object, who: str) -> str:
    """The package of ``trainer``; refuse a Trainer of a package lightning_dnn was not set up for.

    Args:
        trainer: the Trainer a callback, module or data module is attached to.
        who: what is attached, for the message (``"MaxNorm"``).

    Returns:
        ``"pytorch_lightning"`` or ``"lightning"``.

    Raises:
        TypeError: ``trainer`` is not a Lightning Trainer, or comes from a package not in :data:`PACKAGES`.

    Example:
        >>> check_trainer(api().Trainer(logger=False), "MaxNorm") == PRIMARY
        True
    """
    package = package_of(trainer)
    if package is None:
        raise TypeError(
            f"{who} needs a Lightning Trainer (pytorch_lightning.Trainer or lightning.pytorch.Trainer), "
            f"got {type(trainer).__name__}"
        )
    if package not in PACKAGES:
        raise TypeError(_mix_message(who, package))
    return package


def _check_attached(trainer: object, obj: object) -> None:
    """Refuse a Trainer of a package not in :data:`PACKAGES`; anything else (a stand-in in a test) is taken as is."""
    package = package_of(trainer) if trainer is not None else None
    if package is not None and package not in PACKAGES:
        raise TypeError(_mix_message(type(obj).__name__, package))


def is_strategy(strategy: object, *names: str) -> bool:
    """Whether ``strategy`` is an instance of one of the named strategy classes of its own package.

    The strategy's package is already imported (the object exists), so this imports nothing new.

    Example:
        >>> strategies = api("strategies")
        >>> is_strategy(strategies.SingleDeviceStrategy("cpu"), "SingleDeviceStrategy", "DDPStrategy")
        True
        >>> is_strategy(strategies.SingleDeviceStrategy("cpu"), "DDPStrategy")
        False
    """
    package = package_of(strategy)
    if package is None:
        return False
    module = api("strategies", package)
    return any(isinstance(strategy, cls) for n in names if isinstance(cls := getattr(module, n, None), type))


def _attached(obj: object) -> object | None:
    """The Trainer a LightningModule (``_trainer``) or data module (``trainer``) is attached to, if any."""
    state = getattr(obj, "__dict__", {})
    trainer = state.get("_trainer")
    return state.get("trainer") if trainer is None else trainer


def is_overridden(method: str, instance: object, trainer: object | None = None) -> bool:
    """Whether a LightningModule or data module overrides a hook, as the Trainer's package decides it.

    Args:
        method: the hook's name (``"configure_model"``, ``"transfer_batch_to_device"``).
        instance: the module or data module (a LightningModule or LightningDataModule of either package).
        trainer: the Trainer; ``None`` uses the one ``instance`` is attached to, else the instance's package.

    Example:
        >>> class Module(LightningModule):
        ...     def configure_model(self):
        ...         pass
        >>> is_overridden("configure_model", Module()), is_overridden("prepare_data", Module())
        (True, False)
    """
    package = package_of(trainer if trainer is not None else _attached(instance)) or package_of(instance) or PRIMARY
    helper: Callable[[str, object], bool] = api("utilities.model_helpers", package).is_overridden
    return helper(method, instance)


def _methods(cls: type) -> dict[str, Callable[..., Any]]:
    """The plain functions a Lightning base class defines along its MRO (Lightning's classes only, no dunders)."""
    found: dict[str, Callable[..., Any]] = {}
    for klass in reversed(cls.__mro__):
        if klass.__module__.partition(".")[0] not in _ROOTS:
            continue
        for name, value in vars(klass).items():
            if isinstance(value, types.FunctionType) and not (name.startswith("__") and name.endswith("__")):
                found[name] = value
    return found


_BOUND = "_lightning_dnn_bound"  # the instance attribute listing the methods bound by _bind_defaults
_DEFAULTS: dict[tuple[str, str], dict[str, Callable[..., Any]]] = {}  # (class name, package) -> its methods
_INHERITED: dict[tuple[type, str], tuple[str, ...]] = {}  # (class, package) -> the names to bind


def _inherited(cls: type, name: str) -> bool:
    """Whether ``cls`` takes ``name`` from a Lightning base class (not from lightning_dnn's or the user's classes)."""
    for klass in cls.__mro__:
        if name in vars(klass):
            return klass.__module__.partition(".")[0] in _ROOTS
    return False


def _bind_defaults(obj: Any, kind: str, trainer: object | None) -> None:
    """Make ``obj`` resolve the Lightning methods it inherits to the Trainer's package (instance attributes).

    A class of both packages finds the primary package's defaults first. Lightning decides which hooks a module
    overrides by comparing ``__code__`` with its own base class (``is_overridden``) and runs its own default of
    every other hook, so in a Trainer of the other package each inherited method is bound to that package's
    function on the instance (methods the user's class defines are left alone). Nothing is bound for the
    primary package, so its Trainer sees the plain class; lookups cost nothing extra in either.
    """
    state = obj.__dict__
    for name in state.pop(_BOUND, ()):
        value = state.get(name)
        if isinstance(value, types.MethodType) and value.__self__ is obj:
            del state[name]
    package = package_of(trainer) if trainer is not None else None
    if package is None or package == PRIMARY or (kind, package) not in _DEFAULTS:
        return
    methods = _DEFAULTS[kind, package]
    key = (type(obj), package)
    names = _INHERITED.get(key)
    if names is None:
        names = _INHERITED[key] = tuple(n for n in methods if _inherited(type(obj), n))
    bound = tuple(n for n in names if n not in state)
    for name in bound:
        state[name] = types.MethodType(methods[name], obj)
    state[_BOUND] = bound


def _combined(name: str) -> type:
    """One class deriving from ``name`` of every package in use, the primary first."""
    bases = tuple(getattr(api("", p), name) for p in PACKAGES)
    if len(bases) > 1:
        _DEFAULTS.update({(name, p): _methods(base) for p, base in zip(PACKAGES, bases, strict=True)})
    return type(f"_Both{name}", bases, {"__module__": __name__, "__qualname__": f"_Both{name}"})


def combined_callback_base(path: str) -> type:
    """The primary package's callback class ``path`` (``"callbacks.EarlyStopping"``), also a ``Callback`` of the other.

    A subclass works in either package's Trainer and LightningCLI (which require a ``Callback`` subclass).

    Example:
        >>> base = combined_callback_base("callbacks.EarlyStopping")
        >>> issubclass(base, api("callbacks").EarlyStopping), all(issubclass(base, api("", p).Callback) for p in PACKAGES)
        (True, True)
    """
    module, _, name = path.rpartition(".")
    primary = getattr(api(module), name)
    others = tuple(api("", p).Callback for p in PACKAGES[1:])
    if not others:
        return primary  # type: ignore[no-any-return]
    namespace = {"__module__": __name__, "__qualname__": f"_Both{name}"}
    return type(f"_Both{name}", (primary, *others), namespace)


def is_lightning_module(obj: object) -> bool:
    """Whether ``obj`` is a LightningModule of any package in use.

    Example:
        >>> is_lightning_module(LightningModule()), is_lightning_module(object())
        (True, False)
    """
    return any(isinstance(obj, api("", p).LightningModule) for p in PACKAGES)


def is_data_module(obj: object) -> bool:
    """Whether ``obj`` is a LightningDataModule of any package in use.

    Example:
        >>> is_data_module(LightningDataModule()), is_data_module(LightningModule())
        (True, False)
    """
    return any(isinstance(obj, api("", p).LightningDataModule) for p in PACKAGES)


if TYPE_CHECKING:
    from pytorch_lightning import Callback as _CallbackBase
    from pytorch_lightning import LightningDataModule as _DataModuleBase
    from pytorch_lightning import LightningModule as _ModuleBase
else:
    _ModuleBase = _combined("LightningModule")
    _DataModuleBase = _combined("LightningDataModule")
    _CallbackBase = _combined("Callback")


class LightningModule(_ModuleBase):
    """A ``LightningModule`` of every package in use: trains in a ``pytorch_lightning`` or a ``lightning.pytorch`` Trainer.

    Inherited Lightning methods resolve to the attached Trainer's package (see ``docs/LIGHTNING_PACKAGES.md``);
    attaching a Trainer of a package not in :data:`PACKAGES` raises a ``TypeError`` that names the fix.

    Example:
        >>> import torch
        >>> class Tiny(LightningModule):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.layer = torch.nn.Linear(2, 1)
        >>> all(isinstance(Tiny(), api("", p).LightningModule) for p in PACKAGES)
        True
    """

    @property  # type: ignore[override]
    def trainer(self) -> Any:
        """The attached Trainer (raises ``RuntimeError`` when there is none, as Lightning does)."""
        return _ModuleBase.trainer.fget(self)  # type: ignore[attr-defined]

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        _check_attached(trainer, self)
        for child in self.children():
            if is_lightning_module(child):
                child.trainer = trainer
        _bind_defaults(self, "LightningModule", trainer)
        self._trainer = trainer

    def __getstate__(self) -> dict[str, Any]:
        """Lightning's state (without the Trainer), without the methods bound for the Trainer's package."""
        state: dict[str, Any] = super().__getstate__()
        for name in state.pop(_BOUND, ()):
            state.pop(name, None)
        return state


class LightningDataModule(_DataModuleBase):
    """A ``LightningDataModule`` of every package in use (inherited hooks resolve to the attached Trainer's package).

    Example:
        >>> all(isinstance(LightningDataModule(), api("", p).LightningDataModule) for p in PACKAGES)
        True
    """

    @property  # type: ignore[override]
    def trainer(self) -> Any:
        """The attached Trainer, or ``None``."""
        return self.__dict__.get("trainer")

    @trainer.setter
    def trainer(self, trainer: Any) -> None:
        _check_attached(trainer, self)
        _bind_defaults(self, "LightningDataModule", trainer)
        self.__dict__["trainer"] = trainer

    def __getstate__(self) -> dict[str, Any]:
        """The attributes, without the methods bound for the Trainer's package (bound again on unpickling)."""
        state = dict(self.__dict__)
        for name in state.pop(_BOUND, ()):
            state.pop(name, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore the attributes and bind the methods for the Trainer's package again."""
        self.__dict__.update(state)
        _bind_defaults(self, "LightningDataModule", state.get("trainer"))


class Callback(_CallbackBase):
    """A ``Callback`` of every package in use: a subclass works in either package's Trainer and LightningCLI.

    Example:
        >>> all(isinstance(Callback(), api("", p).Callback) for p in PACKAGES)
        True
    """
