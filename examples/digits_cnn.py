"""Probe your own model: a deep plain CNN against a ResNet-style CNN on the digits.

    python examples/digits_cnn.py [--steps 150] [--out runs]

The digits are 8×8 images (scikit-learn ships them: no download). Both nets have eleven 3×3
convolutions of 16 channels. The plain one stacks conv → ReLU with PyTorch's default init,
so the signal shrinks layer after layer and the first layers get almost no gradient; the
ResNet-style one adds batch norm and identity skips (`out += x`, `ReLU(inplace=True)`,
one ReLU module shared inside each block, as torchvision writes it). gradlab watches
each, unchanged, and prints both reports.
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.datasets import load_digits
from torch import nn

import gradlab

CHANNELS, BLOCKS = 16, 5


def digit_images(seed: int = 0) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    x, y = (x[order] - 0.3) / 0.4, y[order]
    return x[:1400], y[:1400], x[1400:], y[1400:]


class PlainCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(1, CHANNELS, 3, padding=1), nn.ReLU()]
        for _ in range(2 * BLOCKS):
            layers += [nn.Conv2d(CHANNELS, CHANNELS, 3, padding=1), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(CHANNELS, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class ResNetCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, CHANNELS, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(CHANNELS), nn.ReLU(inplace=True))
        self.blocks = nn.Sequential(*(BasicBlock(CHANNELS) for _ in range(BLOCKS)))
        self.head = nn.Linear(CHANNELS, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)).mean(dim=(2, 3)))


def train(model: nn.Module, name: str, steps: int, every: int, out: str) -> gradlab.Watch:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digit_images()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    with gradlab.watch(model, every=every, steps=steps, out=out, name=name, optimizer=opt,
                       task="classification", baseline_loss=math.log(10),
                       baseline_accuracy=0.1) as probe:
        for step in range(steps):
            model.train()
            idx = torch.randint(0, len(x_train), (64,))
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
        model.eval()
        with torch.no_grad():
            logits = model(x_test)
        probe.evaluated(step, test_loss=loss_fn(logits, y_test).item(),
                        test_accuracy=(logits.argmax(1) == y_test).float().mean().item())
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--every", type=int, default=15)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    plain, resnet = PlainCNN(), ResNetCNN()
    watched = [train(plain, "digits_plain_cnn", args.steps, args.every, args.out),
               train(resnet, "digits_resnet_cnn", args.steps, args.every, args.out)]
    for probe in watched:
        print(probe.report())
    for probe in watched:
        s = probe.summary or {}
        print(f"{probe.name:18}  grad ratio first/last at init {s.get('grad_ratio_init'):.2g}"
              f", test accuracy {s.get('final_metrics', {}).get('test_accuracy', math.nan):.0%}")
    # the two records side by side, as `gradlab compare` writes them (figures: gradlab report)
    print(f"gradlab report {gradlab.compare_runs(watched, out=args.out, plots=False)}")


if __name__ == "__main__":
    main()
