"""Where a probed step's time goes, timed inside a training loop of a 50 × 100 MLP.

Prints milliseconds per step (CPU time, one torch thread, median over steps) of forward and
backward, the optimiser step, the probe (after_backward + after_step), and the passes over
memory any per-layer probe must make. Not part of `make bench`: a profile, for the README.
Run: `.venv/bin/python benchmarks/probe_parts.py [--activation relu] [--steps 40]`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from torch.nn import functional as F

from gradlab.build.model import build_model
from gradlab.config import ModelConfig
from gradlab.train.probe import Probe


def measure(activation: str, steps: int) -> dict[str, float]:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = build_model(ModelConfig(depth=50, width=100, activation=activation), 100, 1)
    model, layers = built.model, built.layers
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 100), torch.randn(64, 1)
    probe = Probe(layers, every=1, last_step=10**9, activations=True)
    weights = [p.weight.detach() for p in layers]
    hidden: list[torch.Tensor] = []  # the hidden activations, kept by a hook of our own
    for act in model.acts:  # type: ignore[union-attr]
        act.register_forward_hook(lambda m, i, out: hidden.append(out.detach()))
    parts: dict[str, list[float]] = defaultdict(list)
    for step in range(steps + 5):
        clock = [time.process_time()]

        def lap(name: str, clock: list[float] = clock, warm: bool = step >= 5) -> None:
            clock.append(time.process_time())
            if warm:  # the first steps warm up
                parts[name].append((clock[-1] - clock[-2]) * 1e3)

        probe.before_forward(step)
        hidden.clear()
        loss = F.mse_loss(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lap("forward + backward")
        grads = [p.weight.grad for p in layers]
        torch._foreach_norm(grads)
        lap("  one pass: norm of every gradient")
        torch._foreach_norm(grads, 2, dtype=torch.float64)
        lap("  the same in float64")
        torch._foreach_norm(weights)
        lap("  one pass: norm of every weight")
        copies = [w.clone() for w in weights]
        lap("  copy of every weight")
        stacked = torch.stack(hidden)
        lap("  stack the hidden activations")
        stacked.to(torch.float64)
        lap("  ... and copy them to float64")
        probe.after_backward(step)
        lap("probe.after_backward")
        opt.step()
        lap("optimiser step")
        torch._foreach_norm(torch._foreach_sub_(copies, weights) or copies)
        lap("  norm of every update")
        probe.after_step(step)
        lap("probe.after_step (with the one fetch)")
    return {name: statistics.median(ms) for name, ms in parts.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    for name, ms in measure(args.activation, args.steps).items():
        print(f"{name:42s} {ms:6.2f} ms")
