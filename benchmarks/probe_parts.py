"""Where a probed step's time goes, timed inside a training loop of a 50 × 100 MLP.

Prints milliseconds per step (CPU time, one torch thread, median over steps) of forward and
backward, the optimiser step, the probe (after_backward + after_step), and the passes over
memory any per-layer probe must make; then each phase of a step with the probe logging every
step against the same phase unprobed, so the hooks' share shows too (attaching them before
the forward pass, the forward hooks, the backward hooks on z_l). Not part of `make bench`: a
profile, for the README. Quantile steps are left out (every step after the first is one the
probe takes no quantiles on; they cost a few ms more, on one logged step in eight).
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
from gradlab.train.probe import QUANTILE_SAMPLE, QUANTILES, Probe, Scratch, activation_stats, nanquantiles


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
    scratch = Scratch()
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
        activation_stats(hidden, activation, scratch)
        lap("  the activation statistics, batched")
        probe.after_backward(step)
        lap("probe.after_backward")
        opt.step()
        lap("optimiser step")
        torch._foreach_norm(torch._foreach_sub_(copies, weights) or copies)
        lap("  norm of every update")
        probe.after_step(step)
        lap("probe.after_step (with the one fetch)")
    return {name: statistics.median(ms) for name, ms in parts.items()}


PHASES = ("before_forward (hooks attached)", "forward", "backward", "after_backward",
          "optimiser step", "after_step (with the one fetch)")


def phases(activation: str, steps: int, probed: bool) -> dict[str, float]:
    """Median CPU milliseconds of each phase of a step, probed every step or not at all."""
    torch.set_num_threads(1)
    torch.manual_seed(0)
    built = build_model(ModelConfig(depth=50, width=100, activation=activation), 100, 1)
    model = built.model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(64, 100), torch.randn(64, 1)
    probe = Probe(built.layers, every=1, last_step=10**9, activations=True, enabled=probed)
    parts: dict[str, list[float]] = defaultdict(list)
    for step in range(steps + 5):
        clock = [time.process_time()]
        probe.before_forward(step)
        clock.append(time.process_time())
        loss = F.mse_loss(model(x), y)
        clock.append(time.process_time())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        clock.append(time.process_time())
        probe.after_backward(step)
        clock.append(time.process_time())
        opt.step()
        clock.append(time.process_time())
        probe.after_step(step)
        clock.append(time.process_time())
        if step >= 5:
            for name, start, end in zip(PHASES, clock, clock[1:]):
                parts[name].append((end - start) * 1e3)
    probe.close()
    return {name: statistics.median(ms) for name, ms in parts.items()}


def quantile_sorts(rows: int = 100, reps: int = 20) -> dict[str, float]:
    """Median CPU milliseconds of the quantiles of a quantile step's samples (the gradients'
    and the activations' of the 50-layer net: 100 rows of QUANTILE_SAMPLE float64 values, some
    padded with NaN), by torch.nanquantile and by the probe's `nanquantiles`."""
    torch.set_num_threads(1)
    samples = torch.randn(rows, QUANTILE_SAMPLE, dtype=torch.float64)
    samples[-1, 64:] = float("nan")  # the read-out's few entries
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    out = {}
    for name, f in (("torch.nanquantile", lambda: torch.nanquantile(samples, q, dim=1)),
                    ("probe.nanquantiles (NumPy's sort)", lambda: nanquantiles(samples, q))):
        times = []
        for _ in range(reps):
            start = time.process_time()
            f()
            times.append((time.process_time() - start) * 1e3)
        out[f"quantiles of {rows} × {QUANTILE_SAMPLE} samples: {name}"] = statistics.median(times)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--activation", default="relu")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    for name, ms in {**measure(args.activation, args.steps), **quantile_sorts()}.items():
        print(f"{name:42s} {ms:6.2f} ms")
    print(f"\n{'phase of a step':42s} {'unprobed':>9s} {'probed':>9s} {'extra':>9s}")
    phases(args.activation, args.steps, False)  # warm-up: the first model built is slower
    off = phases(args.activation, args.steps, False)
    on = phases(args.activation, args.steps, True)
    for name in PHASES:
        print(f"{name:42s} {off[name]:6.2f} ms {on[name]:6.2f} ms {on[name] - off[name]:6.2f} ms")
    print(f"{'the whole step':42s} {sum(off.values()):6.2f} ms {sum(on.values()):6.2f} ms "
          f"{sum(on.values()) - sum(off.values()):6.2f} ms")
