"""Run a callback's model setup right after ``LightningModule.configure_model``, before the strategy wraps the model.

Lightning 2.6 ``Trainer._run`` calls the callbacks' ``setup``, the module's ``setup``, then ``configure_model``, then
``strategy.setup`` (the DDP/FSDP wrap), then ``on_fit_start``: no callback hook lies between ``configure_model``
and the wrap. :func:`after_configure_model` wraps the module's ``configure_model`` on the instance for one call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lightning_dnn._lightning import is_overridden

if TYPE_CHECKING:
    import pytorch_lightning as pl


__all__ = ["AfterConfigureModel", "after_configure_model"]

_ATTR = "configure_model"


class _Wrapper:
    """The instance attribute that stands for ``configure_model``: the original method, then the listeners.

    ``__wrapped__`` points at the original bound method, so Lightning's ``is_overridden`` still sees the user's
    method (and does not call ``configure_model`` at all when the module does not override it).
    """

    def __init__(self, module: pl.LightningModule, previous: Any) -> None:
        self.module = module
        self.previous = previous  # an instance attribute that was there before, else None
        self.__wrapped__ = module.configure_model
        self.listeners: list[AfterConfigureModel] = []

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.__wrapped__(*args, **kwargs)
        for listener in list(self.listeners):
            listener.run()
        return out

    def remove(self, listener: AfterConfigureModel) -> None:
        if listener in self.listeners:
            self.listeners.remove(listener)
        if not self.listeners and self.module.__dict__.get(_ATTR) is self:
            if self.previous is None:
                del self.module.__dict__[_ATTR]
            else:
                self.module.__dict__[_ATTR] = self.previous


class AfterConfigureModel:
    """One pending call of ``fn`` after ``configure_model``; see :func:`after_configure_model`.

    Example:
        >>> calls = []
        >>> pending = AfterConfigureModel(lambda: calls.append("ran"))
        >>> pending.done, pending.run(), pending.run(), calls
        (False, None, None, ['ran'])
    """

    def __init__(self, fn: Callable[[], None]) -> None:
        self._fn = fn
        self._wrapper: _Wrapper | None = None
        self.done = False

    def run(self) -> None:
        """Call ``fn`` unless it ran already, and take the wrapper off the module."""
        self.detach()
        if not self.done:
            self.done = True
            self._fn()

    def detach(self) -> None:
        """Take the wrapper off the module (``fn`` will not run from ``configure_model``); idempotent."""
        if self._wrapper is not None:
            self._wrapper.remove(self)
            self._wrapper = None


def after_configure_model(pl_module: pl.LightningModule, fn: Callable[[], None]) -> AfterConfigureModel:
    """Call ``fn()`` once: right after ``pl_module.configure_model`` if the module overrides it, else now.

    Call this from a callback's ``setup``. The returned object's :meth:`~AfterConfigureModel.run` is a fallback to
    call later (``on_fit_start``): it runs ``fn`` if nothing did yet; :meth:`~AfterConfigureModel.detach` (from
    ``teardown``) restores the module's own ``configure_model`` if Lightning never called it. Several callbacks
    share one wrapper, called in the order they registered.

    Args:
        pl_module: the LightningModule, before ``configure_model``.
        fn: what to run once the module's layers exist.

    Returns:
        The pending call.

    Example:
        >>> import pytorch_lightning as pl
        >>> class Module(pl.LightningModule):
        ...     def configure_model(self):
        ...         self.built = True
        >>> module, seen = Module(), []
        >>> pending = after_configure_model(module, lambda: seen.append(getattr(module, "built", False)))
        >>> module.configure_model()
        >>> seen, pending.done, "configure_model" in module.__dict__
        ([True], True, False)
    """
    pending = AfterConfigureModel(fn)
    if not is_overridden(_ATTR, pl_module):
        pending.run()
        return pending
    current = pl_module.__dict__.get(_ATTR)
    if not isinstance(current, _Wrapper):
        current = _Wrapper(pl_module, current)
        pl_module.__dict__[_ATTR] = current
    current.listeners.append(pending)
    pending._wrapper = current
    return pending
