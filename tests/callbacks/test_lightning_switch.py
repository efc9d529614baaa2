"""The callback tests' package switch (docs/LIGHTNING_PACKAGES.md): under ``LIGHTNING_DNN_TEST_PACKAGE=lightning``
they really run with ``lightning.pytorch``, else with ``pytorch_lightning``."""

from __future__ import annotations

import pytorch_lightning as pl

from lightning_dnn._lightning import PACKAGES
from lightning_dnn.callbacks import MaxNorm
from tests._lightning_alias import requested


def test_the_tests_use_the_package_the_switch_names() -> None:
    trainer = pl.Trainer(logger=False, callbacks=[MaxNorm(1.0)])
    if requested() == "lightning":
        assert type(trainer).__module__.startswith("lightning.pytorch.")
        assert PACKAGES == ("lightning",)
    else:
        assert type(trainer).__module__.startswith("pytorch_lightning.")
        assert PACKAGES[0] == "pytorch_lightning"
    assert isinstance(MaxNorm(1.0), pl.Callback)
