"""LayerFreezer under FSDP: a backbone built in ``configure_model`` is frozen before FSDP wraps it, and never moves.

Lightning 2.6 runs ``FSDPStrategy`` on CUDA only (``accelerator="cpu"`` raises "requires a GPU accelerator"), so
this check is a script that ``bench/gpu_check.sh`` runs on one GPU, not a CI test:

    python -m bench.fsdp_check              # 1 GPU, FSDPStrategy (use_orig_params=True, Lightning's default)

torch 2.14's FSDP refuses the CPU too (``FullyShardedDataParallel`` raises "FSDP needs a non-CPU accelerator
device"), even under a strategy subclass that skips Lightning's check.

It fits a LightningModule whose ``backbone`` and ``head`` are created in ``configure_model`` (under FSDP's
``tensor_init_context``/``model_sharded_context``) with ``LayerFreezer("backbone")`` and an FSDP auto-wrap policy
that wraps every ``nn.Linear``, then checks, printing one line per check and exiting 1 if one fails:

1. at fit start (after the FSDP wrap) the backbone's parameters have ``requires_grad=False``, the head's True;
2. the optimizer holds only head parameters (``configure_optimizers`` keeps the ``requires_grad`` ones);
3. at every optimizer step the backbone's gradients are ``None`` and the head's are not;
4. after the fit the full state dict's backbone tensors (batch-norm statistics included) equal their initial
   values, and the head's differ.
"""

from __future__ import annotations

import argparse
import sys
from collections import OrderedDict
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.strategies import FSDPStrategy
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_dnn.callbacks.freezing import LayerFreezer


class LazyNet(pl.LightningModule):
    """``backbone`` (Linear, BatchNorm, ReLU, Linear) and ``head`` created in ``configure_model``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone: nn.Module | None = None
        self.head: nn.Module | None = None

    def configure_model(self) -> None:
        if self.backbone is not None:
            return
        torch.manual_seed(0)
        self.backbone = nn.Sequential(
            OrderedDict(fc1=nn.Linear(16, 32), bn=nn.BatchNorm1d(32), act=nn.ReLU(), fc2=nn.Linear(32, 32))
        )
        self.head = nn.Linear(32, 4)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        assert self.backbone is not None and self.head is not None
        x, y = batch
        return nn.functional.cross_entropy(self.head(self.backbone(x).relu()), y)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.1)


class Checks(Callback):
    """Records what the checks need: flags and optimizer at fit start, gradients at every step."""

    def __init__(self) -> None:
        self.requires_grad: dict[str, bool] = {}
        self.optimizer_names: list[str] = []
        self.bad_grads: list[str] = []
        self.steps = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        named = [(_clean(n), p) for n, p in pl_module.named_parameters()]
        self.requires_grad = {n: p.requires_grad for n, p in named}
        held = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.optimizer_names = [n for n, p in named if id(p) in held]

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        self.steps += 1
        for name, param in ((_clean(n), p) for n, p in pl_module.named_parameters()):
            if name.startswith("backbone.") != (param.grad is None):
                self.bad_grads.append(
                    f"step {self.steps}: {name} grad={'None' if param.grad is None else 'set'}"
                )


def _clean(name: str) -> str:
    """A parameter name without the FSDP wrappers' components."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


def _initial_state() -> dict[str, Tensor]:
    model = LazyNet()
    model.configure_model()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main(argv: list[str] | None = None) -> int:
    """Run the fit and the checks; return the exit status (0: all checks passed)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: FSDP check not run (Lightning and torch run FSDP on accelerators only)")
        return 1
    strategy = FSDPStrategy(auto_wrap_policy={nn.Linear})  # every Linear its own flat parameter
    checks = Checks()
    trainer = pl.Trainer(
        accelerator="cuda",
        devices=1,
        strategy=strategy,
        max_steps=args.steps,
        callbacks=[LayerFreezer("backbone"), checks],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    gen = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(64, 16, generator=gen), torch.randint(0, 4, (64,), generator=gen))
    model = LazyNet()
    trainer.fit(model, DataLoader(data, batch_size=16))
    final = {_clean(k): v.detach().cpu() for k, v in trainer.strategy.lightning_module_state_dict().items()}
    initial = _initial_state()

    names = list(checks.requires_grad)
    results = {
        "backbone frozen, head trainable at fit start (after the FSDP wrap)": bool(names)
        and checks.requires_grad == {n: not n.startswith("backbone.") for n in names},
        "the optimizer holds only the head": checks.optimizer_names == ["head.weight", "head.bias"],
        f"no backbone gradient, head gradients at all {checks.steps} steps": checks.steps == args.steps
        and not checks.bad_grads,
        "backbone (batch-norm statistics included) unchanged after the fit": all(
            k in final and torch.equal(final[k], v) for k, v in initial.items() if k.startswith("backbone.")
        ),
        "head trained": "head.weight" in final
        and not torch.equal(final["head.weight"], initial["head.weight"]),
    }
    print(
        f"torch {torch.__version__}, pytorch_lightning {pl.__version__}, {torch.cuda.get_device_name()}, "
        f"strategy {type(strategy).__name__}, wrapped: {type(trainer.strategy.model).__name__}"
    )
    for what, ok in results.items():
        print(f"{'PASS' if ok else 'FAIL'}  {what}")
    for line in checks.bad_grads[:10]:
        print("   ", line)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
