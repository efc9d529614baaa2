"""Other libraries' layouts of a Hub repo: timm's ``config.json`` and the renames that map its names onto torchvision's.

Package-internal. A timm repo holds ``config.json`` with ``architecture`` (``"resnet18"``, maybe with a
``.tag``), ``num_classes`` and ``pretrained_cfg``, and ``model.safetensors`` with timm's names. :data:`FAMILIES`
lists the architecture families whose timm names are known, with the prefix renames (timm -> torchvision) where
they differ; only verified entries are listed (timm's ResNet uses torchvision's names: ``conv1``, ``bn1``,
``layer1``..``layer4`` with ``downsample.0/1``, ``fc``). Without ``into=``, a known family is built from
torchvision and any other architecture with timm itself (``timm.create_model(architecture, **model_args)``, when
timm is installed).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from lightning_dnn.hub._plan import apply_rename

__all__ = ["FAMILIES", "TimmLayout", "timm_layout"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """Architectures of one family: timm's names (a regex), torchvision's builder name and the renames."""

    pattern: re.Pattern[str]
    renames: Mapping[str, str] = field(default_factory=dict)


#: family name -> how its timm weights map onto the torchvision network of the same name.
FAMILIES: dict[str, Family] = {
    "resnet": Family(re.compile(r"resnet(18|34|50|101|152)")),
}


#: ``timm.create_model`` arguments that load or fetch weights; never taken from a config.json.
_TIMM_LOADING_ARGS = frozenset(
    {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"}
)


@dataclass(frozen=True)
class TimmLayout:
    """A repo in timm's layout: its architecture (without a ``.tag``), class count and known family (if any).

    Example:
        >>> layout = timm_layout({"architecture": "resnet18.a1_in1k", "num_classes": 10, "pretrained_cfg": {}})
        >>> layout.architecture, layout.num_classes, layout.family
        ('resnet18', 10, 'resnet')
    """

    architecture: str
    num_classes: int | None
    family: str | None
    model_args: Mapping[str, Any] = field(default_factory=dict)

    def translate(self, tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """The file's tensors under torchvision's names (unchanged for an unknown family, which is logged)."""
        if self.family is None:
            log.info(
                "timm layout: no name table for architecture %r (known families: %s); names are used as they are",
                self.architecture,
                ", ".join(FAMILIES),
            )
            return dict(tensors)
        renames = FAMILIES[self.family].renames
        log.info(
            "timm layout: architecture %r, family %r: %s",
            self.architecture,
            self.family,
            f"renames {dict(renames)}" if renames else "timm's names are torchvision's",
        )
        return apply_rename(tensors, renames, check_unused=False) if renames else dict(tensors)

    def build(self) -> nn.Module:
        """The torchvision network for a known family (:meth:`build_torchvision`), else timm's own (:meth:`build_timm`)."""
        return self.build_torchvision() if self.family is not None else self.build_timm()

    def build_timm(self) -> nn.Module:
        """The timm network of this architecture, randomly initialized, from the config's ``model_args``.

        Raises:
            ValueError: when timm is not installed or has no such architecture.
        """
        try:
            import timm
        except ImportError:
            raise ValueError(
                f"timm architecture {self.architecture!r} has no torchvision counterpart here (known families: "
                f"{', '.join(FAMILIES)}) and timm is not installed: pip install timm, or build the network "
                "yourself and load into it: load_pretrained(source, into=net)"
            ) from None
        if not timm.is_model(self.architecture):
            close = difflib.get_close_matches(self.architecture, timm.list_models(), n=3)
            raise ValueError(
                f"timm {timm.__version__} has no architecture {self.architecture!r} (close matches: {close}); "
                "upgrade timm, or build the network yourself and load into it: load_pretrained(source, into=net)"
            )
        loaders = sorted(set(self.model_args) & _TIMM_LOADING_ARGS)
        if loaders:
            raise ValueError(
                f"timm config for {self.architecture!r}: 'model_args' {loaders} would make timm load files or "
                "download weights (checkpoint_path unpickles); remove them from config.json, or build the network "
                "yourself and load into it: load_pretrained(source, into=net)"
            )
        kwargs = dict(self.model_args)
        if self.num_classes is not None:
            kwargs.setdefault("num_classes", self.num_classes)
        log.info("timm layout: building timm's %r with %s", self.architecture, kwargs)
        net: nn.Module = timm.create_model(self.architecture, pretrained=False, **kwargs)
        return net

    def build_torchvision(self) -> nn.Module:
        """The torchvision network of this architecture with ``num_classes`` outputs, randomly initialized.

        Raises:
            ValueError: for an architecture outside :data:`FAMILIES` or a config without ``num_classes``.
        """
        if self.family is None or self.num_classes is None:
            raise ValueError(
                f"timm architecture {self.architecture!r} (num_classes {self.num_classes}) has no torchvision "
                f"counterpart here (known families: {', '.join(FAMILIES)}); build the network yourself and load "
                "into it: load_pretrained(source, into=net)"
            )
        import torchvision  # trusted (lightning_dnn._specs.TRUSTED_PACKAGES); imported only when needed

        net: nn.Module = torchvision.models.get_model(
            self.architecture, weights=None, num_classes=self.num_classes
        )
        return net


def timm_layout(document: Mapping[str, Any] | None) -> TimmLayout | None:
    """The timm layout ``document`` (a ``config.json``) describes, or ``None`` when it is not timm's.

    Example:
        >>> timm_layout({"library": "lightning-dnn", "architecture": "MLP"}) is None
        True
    """
    if document is None or "library" in document:
        return None
    architecture = document.get("architecture")
    if not isinstance(architecture, str) or not ("pretrained_cfg" in document or "num_classes" in document):
        return None
    name = architecture.split(".", 1)[0]
    num_classes = document.get("num_classes")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        num_classes = None
    family = next((key for key, fam in FAMILIES.items() if fam.pattern.fullmatch(name)), None)
    model_args = document.get("model_args")
    if not isinstance(model_args, dict) or not all(isinstance(k, str) for k in model_args):
        model_args = {}
    return TimmLayout(name, num_classes, family, model_args)
