"""Cost of one FTRL optimizer step against torch's Adam (foreach) on the same ~1M-parameter MLP.

Every optimizer updates its own copy of a 784-1000-200-10 MLP (987,210 parameters) with the same fixed random
gradients. The steps are timed interleaved (one step of each variant per round) in one process, so machine noise
hits all variants alike; the table gives the median per step and the ratio to Adam. Goal: FTRL <= 1.5x Adam on
CPU.

Usage::

    python -m bench.optim_step                              # CPU, torch's threads, wall clock, 50 rounds
    python -m bench.optim_step --threads 1 --clock cpu      # steadier on a busy shared machine
    python -m bench.optim_step --device cuda                # synchronises around every step
"""

from __future__ import annotations

import argparse
import itertools
import platform
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from lightning_dnn.optim import FTRL


def _mlp_parameters(sizes: list[int], generator: torch.Generator, device: torch.device) -> list[nn.Parameter]:
    params = []
    for fan_in, fan_out in itertools.pairwise(sizes):
        weight = torch.randn(fan_out, fan_in, generator=generator) * fan_in**-0.5
        params += [nn.Parameter(weight.to(device)), nn.Parameter(torch.zeros(fan_out, device=device))]
    return params


def _copy_with_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> list[nn.Parameter]:
    copies = []
    for p, g in zip(params, grads, strict=True):
        q = nn.Parameter(p.detach().clone())
        q.grad = g.clone()
        copies.append(q)
    return copies


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="784,1000,200,10", help="MLP layer sizes (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=50, help="timed rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed rounds first (default: %(default)s)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "cpu"),
        default="wall",
        help="wall: perf_counter; cpu: process CPU time, steadier on a shared machine with --threads 1 "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sizes = [int(s) for s in args.sizes.split(",")]
    generator = torch.Generator().manual_seed(0)
    base = _mlp_parameters(sizes, generator, device)
    grads = [torch.randn(p.shape, generator=generator).to(device) * 1e-2 for p in base]
    n_params = sum(p.numel() for p in base)

    variants: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
        "Adam (foreach)": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "FTRL (single-tensor)": lambda ps: FTRL(ps, lr=1e-2, foreach=False),
        "FTRL (foreach)": lambda ps: FTRL(ps, lr=1e-2, foreach=True),
        "FTRL l1=1e-3 (single-tensor)": lambda ps: FTRL(ps, lr=1e-2, l1=1e-3, foreach=False),
        "FTRL l1=1e-3 (foreach)": lambda ps: FTRL(ps, lr=1e-2, l1=1e-3, foreach=True),
    }
    optimizers = {name: make(_copy_with_grads(base, grads)) for name, make in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in optimizers}

    clock = time.perf_counter if args.clock == "wall" or device.type == "cuda" else time.process_time

    def timed_step(optimizer: torch.optim.Optimizer) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = clock()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return clock() - start

    for round_ in range(args.warmup + args.rounds):
        for name, optimizer in optimizers.items():
            elapsed = timed_step(optimizer)
            if round_ >= args.warmup:
                times[name].append(elapsed)

    medians = {name: statistics.median(values) for name, values in times.items()}
    adam = medians["Adam (foreach)"]
    machine = f"{platform.machine()} {torch.get_num_threads()} threads, {device.type}, {args.clock} clock"
    if device.type == "cuda":
        machine += f" ({torch.cuda.get_device_name(device)})"
    print(
        f"one optimizer step, {n_params:,} parameters ({args.sizes}), median of {args.rounds} interleaved rounds"
    )
    print(f"torch {torch.__version__}, {machine}")
    print(f"{'optimizer':<30} {'ms/step':>9} {'vs Adam':>8}")
    for name, median in medians.items():
        print(f"{name:<30} {median * 1e3:>9.3f} {median / adam:>7.2f}x")
    worst = max(medians[name] / adam for name in medians if name.startswith("FTRL"))
    print()
    print("bench/RESULTS.md line:")
    print(
        f"| optim_step | FTRL step / Adam(foreach) step, {n_params / 1e6:.2f}M params | "
        f"single-tensor {medians['FTRL (single-tensor)'] / adam:.2f}x, "
        f"foreach {medians['FTRL (foreach)'] / adam:.2f}x, "
        f"l1 foreach {medians['FTRL l1=1e-3 (foreach)'] / adam:.2f}x (worst {worst:.2f}x; goal <= 1.5x) | "
        f"{machine}, torch {torch.__version__} |"
    )


if __name__ == "__main__":
    main()
