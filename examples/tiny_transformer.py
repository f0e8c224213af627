"""Probe your own model: a tiny Transformer, Post-LN against Pre-LN, on the digits.

    python examples/tiny_transformer.py [--steps 200] [--out runs]

Each 8×8 digit is read as a sequence of 8 rows (tokens of 8 pixels). The encoder is
PyTorch's own `nn.TransformerEncoderLayer`, six layers deep, once with the LayerNorm after
each residual branch (Post-LN, the original Transformer) and once before it (Pre-LN, with a
final LayerNorm). gradlab watches the embedding, every attention and feed-forward matrix and
every LayerNorm, in the order they run, and prints both reports.
"""

from __future__ import annotations

import argparse
import math

import torch
from sklearn.datasets import load_digits
from torch import nn

import gradlab

WIDTH, HEADS, DEPTH = 32, 4, 12


def digit_rows(seed: int = 0) -> tuple[torch.Tensor, ...]:
    x, y = load_digits(return_X_y=True)
    x = (torch.tensor(x, dtype=torch.float32).reshape(-1, 8, 8) / 16.0 - 0.3) / 0.4
    y = torch.tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    return x[order][:1400], y[order][:1400], x[order][1400:], y[order][1400:]


class TinyTransformer(nn.Module):
    def __init__(self, pre_ln: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(8, WIDTH)
        self.position = nn.Embedding(8, WIDTH)
        layer = nn.TransformerEncoderLayer(WIDTH, HEADS, 2 * WIDTH, dropout=0.0,
                                           activation=nn.GELU(), batch_first=True,
                                           norm_first=pre_ln)
        self.encoder = nn.TransformerEncoder(layer, DEPTH, enable_nested_tensor=False,
                                             norm=nn.LayerNorm(WIDTH) if pre_ln else None)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.position(torch.arange(x.shape[1], device=x.device))
        return self.head(self.encoder(h).mean(dim=1))


def train(pre_ln: bool, steps: int, every: int, out: str) -> gradlab.Watch:
    torch.manual_seed(0)
    x_train, y_train, x_test, y_test = digit_rows()
    model = TinyTransformer(pre_ln)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    name = "transformer_pre_ln" if pre_ln else "transformer_post_ln"
    with gradlab.watch(model, every=every, steps=steps, out=out, name=name, optimizer=opt,
                       task="classification", baseline_loss=math.log(10),
                       baseline_accuracy=0.1) as probe:
        for step in range(steps):
            idx = torch.randint(0, len(x_train), (32,))
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
        with torch.no_grad():
            logits = model(x_test)
        probe.evaluated(step, test_loss=loss_fn(logits, y_test).item(),
                        test_accuracy=(logits.argmax(1) == y_test).float().mean().item())
    return probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=20)
    parser.add_argument("--out", default="runs")
    args = parser.parse_args()
    torch.set_num_threads(1)
    watched = [train(False, args.steps, args.every, args.out),
               train(True, args.steps, args.every, args.out)]
    for probe in watched:
        print(probe.report())
    for probe in watched:
        s = probe.summary or {}
        print(f"{probe.name:20}  grad ratio first/last at init "
              f"{s.get('grad_ratio_init'):.2g}, test accuracy "
              f"{s.get('final_metrics', {}).get('test_accuracy', math.nan):.0%}")
    # the two records side by side, as `gradlab compare` writes them (figures: gradlab report)
    print(f"gradlab report {gradlab.compare_runs(watched, out=args.out, plots=False)}")


if __name__ == "__main__":
    main()
