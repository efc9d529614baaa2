r"""Load a selection of named tensors into a network, with a report of what happened to every name.

This is the chapter's layer reuse (``hidden[123]`` of a trained network into a new one with a new head) done by
name:

1. ``rename`` maps prefixes of the file's names to the target's names (longest prefix first), so
   ``{"hidden": "encoder.hidden"}`` turns ``hidden1.linear.weight`` into ``encoder.hidden1.linear.weight``;
2. ``include``/``exclude`` follow the library's one selection rule on the renamed file names and on the
   target's ``state_dict`` names (parameters and persistent buffers), relative to the network loaded into: a
   pattern ``re.fullmatch``-es a module's dotted name (selecting all its tensors) or a tensor's name, so
   ``include="hidden[123]"`` selects ``hidden1.*``, ``hidden2.*`` and ``hidden3.*`` but never ``hidden10.*``, and
   ``include=r"output\.linear\.weight"`` selects that one tensor;
3. every selected name is then *loaded* (present on both sides with the same shape), *missing* (in the target
   only), *unexpected* (in the file only), *mismatched* (shapes differ) or *dtype-mismatched* (the dtypes are of
   different kinds, e.g. int64 or bool weights for a float32 parameter: a copy would cast silently; float16/32/64
   and bfloat16 among themselves are one kind). File names outside the selection are *skipped*. Target names
   outside the selection are left as they are.

With ``strict=True`` any missing, unexpected, mismatched or dtype-mismatched name raises :class:`~lightning_dnn.hub.StrictLoadError`
listing all of them, and nothing is copied (everything is validated first). With ``strict=False`` the same list is
warned about and what fits is copied.
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from lightning_dnn._selection import Patterns
from lightning_dnn.hub._plan import LoadReport, copy_pairs, enforce_strictness, plan_partial_load

__all__ = ["LoadReport", "load_state_dict_partial"]


def load_state_dict_partial(
    target: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    rename: Mapping[str, str] | None = None,
    strict: bool = True,
    source: str = "the file",
) -> LoadReport:
    """Copy the selected tensors of ``state_dict`` into ``target`` by name; see the module docstring.

    Args:
        target: the network to load into (its parameters and persistent buffers are the target names).
        state_dict: name -> tensor, e.g. read from ``model.safetensors``.
        include: regex or list of regexes; a name is selected when a pattern ``re.fullmatch``-es it or the name
            of a module holding it. ``None`` selects everything. Each pattern must select a file or target name.
        exclude: regex or list of regexes removing names from the selection (same rule).
        rename: old prefix -> new prefix, applied to the file's names before selection (longest prefix first).
        strict: raise on any missing, unexpected, mismatched or dtype-mismatched name (copying nothing); otherwise
            warn and copy what fits.
        source: how to name the file in messages.

    Returns:
        the :class:`LoadReport`.

    Raises:
        StrictLoadError: with ``strict=True``, when the report is not :attr:`LoadReport.ok`.
        TypeError: for arguments of the wrong type.
        ValueError: for an invalid regex, a pattern that matches nothing, or a ``rename`` that maps two file
            names onto one.

    Example:
        >>> import torch
        >>> from lightning_dnn.nn import MLP
        >>> old, new = MLP(8, (6, 4), 3), MLP(8, (6, 4), 5)
        >>> report = load_state_dict_partial(new, old.state_dict(), include="hidden[12]")
        >>> report.loaded
        ['hidden1.linear.weight', 'hidden1.linear.bias', 'hidden2.linear.weight', 'hidden2.linear.bias']
        >>> report.skipped
        ['output.linear.weight', 'output.linear.bias']
        >>> torch.equal(new.hidden1.linear.weight, old.hidden1.linear.weight)
        True
    """
    report, pairs = plan_partial_load(target, state_dict, include=include, exclude=exclude, rename=rename)
    enforce_strictness(report, strict=strict, source=source, target=target)
    copy_pairs(pairs)
    return report
