"""FeatureCache's safety checks and the freeze audit in one DDP rank, run by ``test_feature_cache_safety_ddp.py``.

``LOCAL_RANK=r python _feature_cache_safety_ddp_script.py OUT_DIR SCENARIO`` runs rank ``r`` of a 2-process CPU DDP
fit (each rank launched by the test, so that an error stays in its process):

* ``verify``: LayerFreezer + ``FeatureCache(verify=True)`` + FreezeAuditor (frozen batch norm in the trunk, none
  in the head); saves the weights, the boundary and the audit to ``verify-cached-devices2-rank{r}.pt``.
  ``run(out, 1, cached=False)`` is the single-process live reference.
* ``refuse``: a trainable ``shift`` used between frozen layers and batch norm in the head, DDP without buffer sync;
  saves the error each rank raised and its audit to ``refuse-rank{r}.pt`` (every rank must refuse, none may hang).
"""

from __future__ import annotations

import inspect
import sys
from collections import OrderedDict
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.strategies import DDPStrategy
from torch import Tensor, nn

from lightning_dnn.callbacks import FreezeAuditor, LayerFreezer
from lightning_dnn.callbacks.feature_cache import FeatureCache
from lightning_dnn.data import ArrayDataModule
from lightning_dnn.module import DNNClassifier
from lightning_dnn.nn import MLP
from tests.trainer_utils import quiet_trainer_kwargs

NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)

N, D, C, GLOBAL_BATCH = 48, 10, 3, 16


class Shifted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden1, self.hidden2 = nn.Linear(D, 12), nn.Linear(12, 12)
        self.output = nn.Sequential(nn.BatchNorm1d(12), nn.Linear(12, C))
        self.shift = nn.Parameter(torch.full((12,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        return self.output(torch.relu(self.hidden2(torch.relu(self.hidden1(x)) + self.shift)))


def make_model(scenario: str) -> DNNClassifier:
    torch.manual_seed(0)
    if scenario == "refuse":
        return DNNClassifier(Shifted(), C, optimizer="adam", lr=1e-2)
    net = MLP(D, (12, 12), 12, norm="batch")  # hidden1, hidden2 with batch norm (frozen: kept in eval mode)
    net = nn.Sequential(OrderedDict(trunk=net, act=nn.ReLU(), output=nn.Linear(12, C)))
    return DNNClassifier(net, C, optimizer="adam", lr=1e-2)  # type: ignore[arg-type]


def make_data(devices: int) -> ArrayDataModule:
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, D, generator=gen), torch.randint(0, C, (N,), generator=gen)
    return ArrayDataModule(x, y, batch_size=GLOBAL_BATCH // devices, seed=3)


def run(out_dir: str | Path, devices: int, scenario: str = "verify", *, cached: bool = True) -> None:
    out = Path(out_dir)
    model = make_model(scenario)
    auditor = FreezeAuditor(example_input=torch.randn(4, D))
    cache = FeatureCache(verify=True)
    trainer = pl.Trainer(
        **quiet_trainer_kwargs(
            out / f"root{devices}",
            devices=devices,
            strategy=DDPStrategy(**(NO_BUFFER_SYNC if scenario == "refuse" else {})) if devices > 1 else "auto",
            max_epochs=2,
            num_sanity_val_steps=0,
            callbacks=[LayerFreezer(r"(trunk\.)?hidden[12]"), *([cache, auditor] if cached else [])],
        )
    )
    mode = "cached" if cached else "live"
    if scenario == "refuse":
        try:
            trainer.fit(model, make_data(devices))
        except ValueError as err:
            audit = auditor.audit
            torch.save(
                {"error": str(err), "ddp": list(audit.ddp) if audit else []},
                out / f"refuse-rank{trainer.global_rank}.pt",
            )
        return
    trainer.fit(model, make_data(devices))
    audit = auditor.audit
    result = {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "boundary": cache.current_boundary,
        "world_size": trainer.world_size,
        "ddp": list(audit.ddp) if audit is not None else [],
        "cut": audit.cut.boundary if audit is not None and audit.cut is not None else None,
    }
    torch.save(result, out / f"{scenario}-{mode}-devices{devices}-rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    run(sys.argv[1], 2, sys.argv[2])
