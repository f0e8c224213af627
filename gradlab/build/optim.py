"""Optimisers, learning-rate schedules and losses, each a table keyed by the config's names.

`build_optimizer(params, cfg.train)`, `lr_at(step, cfg.train, total)` (a pure function of the
step) and `loss_function(name, task, n_out)` are what the training loop is assembled from.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.nn import functional as F

from gradlab.config import TrainConfig

OPTIMIZERS: dict[str, Callable[[Any, TrainConfig], torch.optim.Optimizer]] = {
    "sgd": lambda p, t: torch.optim.SGD(p, t.lr, momentum=t.momentum, nesterov=t.nesterov,
                                        weight_decay=t.weight_decay),
    "adam": lambda p, t: torch.optim.Adam(p, t.lr, betas=t.betas, eps=t.eps,
                                          weight_decay=t.weight_decay),
    "adamw": lambda p, t: torch.optim.AdamW(p, t.lr, betas=t.betas, eps=t.eps,
                                            weight_decay=t.weight_decay),
    "rmsprop": lambda p, t: torch.optim.RMSprop(p, t.lr, alpha=t.alpha, eps=t.eps,
                                                momentum=t.momentum, weight_decay=t.weight_decay),
    "adagrad": lambda p, t: torch.optim.Adagrad(p, t.lr, eps=t.eps, weight_decay=t.weight_decay),
}

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def build_optimizer(params: Any, t: TrainConfig) -> torch.optim.Optimizer:
    return OPTIMIZERS[t.optimizer](params, t)


def lr_at(step: int, t: TrainConfig, total: int) -> float:
    """The learning rate at `step`: linear warmup, then the schedule."""
    if step < t.schedule.warmup_steps:
        return t.lr * (step + 1) / t.schedule.warmup_steps
    s = t.schedule
    k = step - s.warmup_steps
    if s.name == "step":
        return t.lr * s.gamma ** (k // s.step_size)
    if s.name == "exponential":
        return t.lr * s.gamma ** (k / s.step_size)
    if s.name == "cosine":
        span = max(1, total - s.warmup_steps)
        return s.min_lr + (t.lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(k, span) / span))
    return t.lr


def loss_name(name: str, task: str) -> str:
    """`auto` is mse for regression and cross_entropy for classification."""
    if name == "auto":
        return "mse" if task == "regression" else "cross_entropy"
    return name


def loss_function(name: str, task: str, n_out: int) -> Loss:
    """mse or cross_entropy (`auto` picks by task); sequence outputs are flattened over time."""
    name = loss_name(name, task)
    if name == "cross_entropy":
        return lambda out, y: F.cross_entropy(out.reshape(-1, n_out), y.reshape(-1))
    if task == "classification":  # mse against one-hot targets
        return lambda out, y: F.mse_loss(out, F.one_hot(y, n_out).to(out.dtype))
    return lambda out, y: F.mse_loss(out, y)



@torch.no_grad()
def trivial_baseline(y_train: torch.Tensor, y_test: torch.Tensor, task: str, n_out: int,
                     name: str) -> dict[str, float]:
    """What a predictor that ignores its input scores on the test split, with the run's own
    loss `name`: the training mean for regression, the training class frequencies for
    classification (as logits for cross-entropy, as probabilities for MSE on one-hot targets),
    and the accuracy of always answering the most frequent class. A net that does not beat
    this has learned nothing from its inputs."""
    loss = loss_function(name, task, n_out)
    if task == "regression":
        mean = y_train.float().mean(dim=0)
        return {"loss": float(loss(mean.expand_as(y_test), y_test))}
    counts = torch.bincount(y_train.reshape(-1), minlength=n_out).double() + 1.0  # add-one
    prior = (counts / counts.sum()).float()
    constant = prior.log() if loss_name(name, task) == "cross_entropy" else prior
    majority = int(prior.argmax())
    return {"loss": float(loss(constant.expand(*y_test.shape, n_out), y_test)),
            "accuracy": float((y_test == majority).double().mean())}
