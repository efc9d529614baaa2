"""LayerFreezer's frozen set: who holds which parameter, the marks of what it froze, and their release.

Module names are relative to the root (the LightningModule); ``""`` is the root itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from lightning_dnn._lightning import rank_zero_info, rank_zero_warn
from lightning_dnn._selection import select_modules, shorten

__all__ = [
    "EVAL_MARK",
    "FROZEN_MARK",
    "check_freezes_something",
    "freeze_params",
    "frozen_norms",
    "head_frozen_set",
    "hold_eval",
    "holds_parameters",
    "mark_frozen",
    "marked_frozen",
    "owned_parameters",
    "owner_map",
    "refreeze",
    "release_norms",
    "release_stale",
    "unfreeze_owned",
    "warn_foreign",
    "with_descendants",
]

#: Set on a module: the local names of its parameters that a LayerFreezer froze (survives a new LayerFreezer, a new
#: LightningModule around the network, ``copy.deepcopy`` and pickling, unlike an attribute on the parameter).
FROZEN_MARK = "_layer_freezer_frozen"
#: Set on a normalization layer that a LayerFreezer put in eval mode.
EVAL_MARK = "_layer_freezer_eval"


def mark_frozen(root: nn.Module, params: Iterable[nn.Parameter], frozen: bool) -> None:
    """Record (or erase) on their modules that a LayerFreezer froze ``params``: local names in :data:`FROZEN_MARK`.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> mark_frozen(net, [net.weight.requires_grad_(False)], True)
        >>> sorted(net.__dict__[FROZEN_MARK]), marked_frozen(net) == {id(net.weight)}
        (['weight'], True)
    """
    ids = {id(p) for p in params}
    if not ids:
        return
    for module in root.modules():
        local = {n for n, p in module.named_parameters(recurse=False) if id(p) in ids}
        if not local:
            continue
        names = set(module.__dict__.get(FROZEN_MARK, ()))
        names = names | local if frozen else names - local
        if names:
            module.__dict__[FROZEN_MARK] = frozenset(names)
        else:
            module.__dict__.pop(FROZEN_MARK, None)


def marked_frozen(root: nn.Module) -> set[int]:
    """``id()`` of the parameters of ``root`` that a LayerFreezer froze and that are still frozen.

    Example:
        >>> marked_frozen(nn.Linear(2, 2))
        set()
    """
    ids = set()
    for module in root.modules():
        names = module.__dict__.get(FROZEN_MARK)
        if names:
            ids |= {
                id(p) for n, p in module.named_parameters(recurse=False) if n in names and not p.requires_grad
            }
    return ids


def with_descendants(chosen: Sequence[str], names: Sequence[str]) -> set[str]:
    """``chosen`` and every name in ``names`` below one of them.

    Example:
        >>> sorted(with_descendants(["net.a"], ["net.a", "net.a.x", "net.ab", "net.b"]))
        ['net.a', 'net.a.x']
    """
    prefixes = tuple(c + "." for c in chosen)
    return set(chosen) | {n for n in names if n.startswith(prefixes)}


def owned_parameters(root: nn.Module, modules: set[str]) -> list[tuple[str, nn.Parameter]]:
    """Parameters (deduplicated, ``named_parameters`` order) directly owned by one of the named ``modules``.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> [n for n, _ in owned_parameters(net, {"1"})]
        ['1.weight', '1.bias']
    """
    if not modules:
        return []
    ids = {id(p) for n, m in root.named_modules() if n in modules for p in m.parameters(recurse=False)}
    return [(n, p) for n, p in root.named_parameters() if id(p) in ids]


def owner_map(root: nn.Module) -> dict[int, list[str]]:
    """``id(parameter)`` -> names of the modules that hold it directly (several when weights are tied).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> net[1].weight = net[0].weight
        >>> owner_map(net)[id(net[0].weight)]
        ['0', '1']
    """
    owners: dict[int, list[str]] = {}
    for name, module in root.named_modules():
        for p in module.parameters(recurse=False):
            owners.setdefault(id(p), []).append(name)
    return owners


def holds_parameters(root: nn.Module, name: str) -> bool:
    """Whether the module ``name`` holds parameters itself (not counting its submodules).

    Example:
        >>> holds_parameters(nn.Sequential(nn.Linear(2, 2)), ""), holds_parameters(nn.Sequential(nn.Linear(2, 2)), "0")
        (False, True)
    """
    return next(root.get_submodule(name).parameters(recurse=False), None) is not None


def head_frozen_set(root: nn.Module, head: Sequence[re.Pattern[str]]) -> set[str]:
    """The modules ``freeze_all_but_head`` freezes: all but the head modules, their submodules and ancestors.

    An ancestor that holds parameters itself (a ViT's ``cls_token``) is in the set for those.

    Raises:
        ValueError: when a ``head`` pattern selects no module.

    Example:
        >>> import torch
        >>> class Vit(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.token = nn.Parameter(torch.zeros(2))
        ...         self.body, self.head = nn.Linear(2, 2), nn.Linear(2, 2)
        >>> sorted(head_frozen_set(Vit(), [re.compile("head")]))
        ['', 'body']
    """
    heads = [n for n, _ in select_modules(root, head, arg="head")]
    frozen = set()
    for name, module in root.named_modules():
        if any(name == h or h.startswith(name + ".") or not name for h in heads):
            if name not in heads and next(module.parameters(recurse=False), None) is not None:
                frozen.add(name)  # an ancestor: only the tensors it holds itself
        elif not any(name.startswith(h + ".") for h in heads):
            frozen.add(name)
    return frozen


def check_freezes_something(root: nn.Module, frozen: set[str]) -> None:
    """Refuse a frozen set that holds no parameter and no normalization layer.

    Raises:
        ValueError: naming the modules selected.

    Example:
        >>> check_freezes_something(nn.Sequential(nn.ReLU()), {"0"})
        Traceback (most recent call last):
            ...
        ValueError: `freeze` selects modules without parameters or normalization buffers: 0; ...
    """
    params = owned_parameters(root, frozen)
    if not params and not any(isinstance(m, _NormBase) for n, m in root.named_modules() if n in frozen):
        raise ValueError(
            f"`freeze` selects modules without parameters or normalization buffers: "
            f"{shorten(sorted(frozen), 12)}; select the layers that hold the weights."
        )


def freeze_params(root: nn.Module, params: Sequence[nn.Parameter]) -> None:
    """Freeze ``params`` (``requires_grad=False``, ``grad=None``) and mark them as frozen by a LayerFreezer.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> freeze_params(net, [net.weight])
        >>> net.weight.requires_grad, marked_frozen(net) == {id(net.weight)}
        (False, True)
    """
    for param in params:
        param.requires_grad_(False)
        param.grad = None
    mark_frozen(root, params, True)


def refreeze(root: nn.Module, params: Iterable[tuple[str, nn.Parameter]], frozen: set[str]) -> None:
    """Freeze the ``params`` that a module in ``frozen`` holds, make the others trainable, and mark both.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
        >>> refreeze(net, net.named_parameters(), {"1"})
        >>> [p.requires_grad for p in net.parameters()]
        [True, True, False, False]
    """
    owners = owner_map(root)
    now_frozen: list[nn.Parameter] = []
    now_trainable: list[nn.Parameter] = []
    for _, param in params:
        is_frozen = any(o in frozen for o in owners[id(param)])
        param.requires_grad_(not is_frozen)
        (now_frozen if is_frozen else now_trainable).append(param)
        if is_frozen:
            param.grad = None
    mark_frozen(root, now_frozen, True)
    mark_frozen(root, now_trainable, False)


def unfreeze_owned(
    root: nn.Module, params: Iterable[tuple[str, nn.Parameter]], frozen: set[str], modules: set[str]
) -> list[tuple[str, nn.Parameter]]:
    """Make trainable the ``params`` no module in ``frozen`` holds; the norms in ``modules`` follow the root's mode.

    Returns:
        The parameters made trainable (their marks erased).

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).train()
        >>> freeze_params(net, list(net.parameters()))
        >>> hold_eval([net[1]])
        >>> [n for n, _ in unfreeze_owned(net, net.named_parameters(), {"0"}, {"1"})], net[1].training
        (['1.weight', '1.bias'], True)
    """
    owners = owner_map(root)
    unfrozen = []
    for name, param in params:
        if not any(o in frozen for o in owners[id(param)]):
            param.requires_grad_(True)
            unfrozen.append((name, param))
    mark_frozen(root, [p for _, p in unfrozen], False)
    for name, module in root.named_modules():
        if name in modules and isinstance(module, _NormBase):
            module.train(root.training)
            module.__dict__.pop(EVAL_MARK, None)
    return unfrozen


def frozen_norms(root: nn.Module, frozen: set[str]) -> list[nn.Module]:
    """The normalization layers among the ``frozen`` modules.

    Example:
        >>> [type(m).__name__ for m in frozen_norms(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), {"0", "1"})]
        ['BatchNorm1d']
    """
    return [m for n, m in root.named_modules() if n in frozen and isinstance(m, _NormBase)]


def hold_eval(norms: Iterable[nn.Module]) -> None:
    """Put the ``norms`` in training mode back in eval mode, marked (:data:`EVAL_MARK`) so a later fit releases them.

    Example:
        >>> norm = nn.BatchNorm1d(2)
        >>> hold_eval([norm])
        >>> norm.training, norm.__dict__[EVAL_MARK]
        (False, True)
    """
    for module in norms:
        if module.training:
            module.train(False)
            module.__dict__[EVAL_MARK] = True  # so that a later fit can put it back


def release_norms(root: nn.Module, keep: set[str]) -> list[str]:
    """Put the norms a LayerFreezer kept in eval mode (:data:`EVAL_MARK`) and not in ``keep`` back in the root's mode.

    Returns:
        Their names.

    Example:
        >>> net = nn.Sequential(nn.BatchNorm1d(2))
        >>> net[0].eval().__dict__[EVAL_MARK] = True
        >>> release_norms(net, set()), net[0].training
        (['0'], True)
    """
    released = []
    for name, module in root.named_modules():
        if module.__dict__.get(EVAL_MARK) and name not in keep:
            module.train(root.training)
            del module.__dict__[EVAL_MARK]
            released.append(name)
    return released


def release_stale(root: nn.Module, stale: set[int], keep: set[str]) -> None:
    """Unfreeze ``stale`` (frozen by an earlier LayerFreezer, not selected now); release norms not in ``keep``.

    The norms are those it kept in eval mode (:func:`release_norms`); the log says what changed.

    Example:
        >>> net = nn.Linear(2, 2)
        >>> release_stale(net, {id(net.weight.requires_grad_(False))}, set())
        >>> net.weight.requires_grad
        True
    """
    params = [(n, p) for n, p in root.named_parameters() if id(p) in stale]
    for _, param in params:
        param.requires_grad_(True)
    mark_frozen(root, [p for _, p in params], False)
    norms = release_norms(root, keep)
    said = []
    if params:
        said.append(
            f"unfroze {len(params)} parameter tensors that an earlier LayerFreezer froze and `freeze` does not "
            f"select now: {shorten([n for n, _ in params], 12)}"
        )
    if norms:
        mode = "train" if root.training else "eval"
        said.append(
            f"put {len(norms)} normalization layers that it kept in eval mode back in the model's {mode} "
            f"mode: {shorten(norms, 12)}"
        )
    if said:
        rank_zero_info("LayerFreezer: " + "; ".join(said))


def warn_foreign(root: nn.Module, foreign: set[int]) -> None:
    """Warn (once, rank 0) about parameters frozen by something other than a LayerFreezer, which it never touches.

    Example:
        >>> warn_foreign(nn.Linear(2, 2), set())  # nothing foreign: silent
    """
    if not foreign:
        return
    names = [n for n, p in root.named_parameters() if id(p) in foreign]
    rank_zero_warn(
        f"LayerFreezer: {len(names)} parameter tensors were frozen before this fit by something other than a "
        f"LayerFreezer (e.g. `requires_grad_(False)`): {shorten(names, 12)}. They stay frozen: LayerFreezer "
        "neither takes them over nor unfreezes them at a step. To train them, call "
        "`requires_grad_(True)` on them before `fit`; to let LayerFreezer manage them, do that too and "
        "select them with `freeze`."
    )
