"""Probe your own model: a plain PyTorch training loop on an MLP, watched by gradlab.

    python examples/mlp_loop.py [--steps 300] [--out runs]

The digits (8×8 images as 64 numbers, shipped with scikit-learn) classified by a deep tanh
MLP. gradlab finds the Linear layers and the Tanh after each, logs their statistics every
`--every` steps into a run record and prints its report; `gradlab report RUN` prints it again.
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.datasets import load_digits
from torch import nn

import gradlab


def digits(seed: int = 0) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = x[order], y[order]
    mean, std = x[:1400].mean(0), x[:1400].std(0) + 1e-3
    x = (x - mean) / std
    return x[:1400], y[:1400], x[1400:], y[1400:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x_train, y_train, x_test, y_test = digits()

    layers: list[nn.Module] = []
    width = 64
    for _ in range(6):
        layers += [nn.Linear(width, 64), nn.Tanh()]
    model = nn.Sequential(*layers, nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = nn.CrossEntropyLoss()

    with gradlab.watch(model, every=args.every, steps=args.steps, out=args.out, name="mlp_loop",
                       optimizer=opt, task="classification",
                       baseline_loss=math.log(10), baseline_accuracy=0.1) as probe:
        for step in range(args.steps):
            idx = torch.randint(0, len(x_train), (64,))
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
        with torch.no_grad():  # evaluations run without gradients: the probe ignores them
            out = model(x_test)
            probe.evaluated(step, test_loss=loss_fn(out, y_test).item(),
                            test_accuracy=(out.argmax(1) == y_test).float().mean().item())
    print(probe.report())


if __name__ == "__main__":
    main()
