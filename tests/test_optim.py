"""Learning-rate schedules against hand-computed values, losses against hand computations,
and every optimiser name building with the settings the config gives it.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch.nn import functional as F

from gradlab.build.optim import OPTIMIZERS, build_optimizer, loss_function, lr_at
from gradlab.config import ScheduleConfig, TrainConfig

R2 = math.sqrt(2) / 2  # cos(π/4)


def train_cfg(lr: float, **schedule: object) -> TrainConfig:
    return TrainConfig(lr=lr, schedule=ScheduleConfig(**schedule))  # type: ignore[arg-type]


# (id, lr, schedule settings, total steps, {step: expected lr}); every value written out by hand.
SCHEDULES = [
    ("constant", 0.1, {}, 10, {0: 0.1, 1: 0.1, 9: 0.1, 500: 0.1}),
    ("constant_warmup", 0.1, {"warmup_steps": 4}, 10,
     {0: 0.025, 1: 0.05, 2: 0.075, 3: 0.1, 4: 0.1, 9: 0.1}),
    ("step", 0.1, {"name": "step", "step_size": 3, "gamma": 0.5}, 20,
     {0: 0.1, 2: 0.1, 3: 0.05, 5: 0.05, 6: 0.025, 9: 0.0125, 11: 0.0125}),
    ("step_warmup", 0.1, {"name": "step", "step_size": 3, "gamma": 0.5, "warmup_steps": 2}, 20,
     {0: 0.05, 1: 0.1, 2: 0.1, 4: 0.1, 5: 0.05, 7: 0.05, 8: 0.025}),
    ("exponential", 0.1, {"name": "exponential", "step_size": 2, "gamma": 0.5}, 20,
     {0: 0.1, 1: 0.1 * R2, 2: 0.05, 3: 0.05 * R2, 4: 0.025, 10: 0.1 / 32}),
    ("exponential_warmup", 0.1,
     {"name": "exponential", "step_size": 2, "gamma": 0.5, "warmup_steps": 3}, 20,
     {0: 0.1 / 3, 1: 0.2 / 3, 2: 0.1, 3: 0.1, 4: 0.1 * R2, 5: 0.05, 7: 0.025}),
    ("cosine", 0.1, {"name": "cosine"}, 4,
     {0: 0.1, 1: 0.05 * (1 + R2), 2: 0.05, 3: 0.05 * (1 - R2), 4: 0.0, 9: 0.0}),
    # min_lr 0.2, span 12: lr = 0.2 + 0.4 (1 + cos(π k / 12))
    ("cosine_min_lr", 1.0, {"name": "cosine", "min_lr": 0.2}, 12,
     {0: 1.0, 3: 0.2 + 0.4 * (1 + R2), 4: 0.8, 6: 0.6, 8: 0.4, 12: 0.2, 30: 0.2}),
    # warmup 4 of 16 steps leaves a span of 12 for the cosine, starting at step 4
    ("cosine_warmup", 1.0, {"name": "cosine", "min_lr": 0.2, "warmup_steps": 4}, 16,
     {0: 0.25, 1: 0.5, 2: 0.75, 3: 1.0, 4: 1.0, 8: 0.8, 10: 0.6, 12: 0.4, 16: 0.2, 20: 0.2}),
]


@pytest.mark.parametrize(("lr", "schedule", "total", "expected"),
                         [case[1:] for case in SCHEDULES], ids=[case[0] for case in SCHEDULES])
def test_lr_at_matches_hand_values(lr: float, schedule: dict[str, object], total: int,
                                   expected: dict[int, float]) -> None:
    t = train_cfg(lr, **schedule)
    got = {step: lr_at(step, t, total) for step in expected}
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_every_schedule_name_is_covered() -> None:
    names = {ScheduleConfig(**case[2]).name for case in SCHEDULES}  # type: ignore[arg-type]
    assert names == {"constant", "step", "exponential", "cosine"}


def test_cosine_is_monotone_from_lr_to_min_lr() -> None:
    t = train_cfg(0.3, name="cosine", min_lr=0.01)
    lrs = [lr_at(s, t, 50) for s in range(60)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))
    assert lrs[0] == pytest.approx(0.3) and lrs[-1] == pytest.approx(0.01)


def test_mse_on_class_labels_is_mse_against_one_hot_targets() -> None:
    out = torch.tensor([[0.5, -1.0, 2.0], [0.0, 0.3, 0.1], [1.5, 0.2, -0.4], [0.9, 0.9, 0.9]])
    y = torch.tensor([2, 0, 0, 1])
    one_hot = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    hand = float(((out - one_hot) ** 2).sum()) / out.numel()
    assert float(loss_function("mse", "classification", 3)(out, y)) == pytest.approx(hand)


def test_mse_on_regression_targets() -> None:
    out, y = torch.tensor([[1.0], [2.0], [-1.0]]), torch.tensor([[0.0], [2.5], [1.0]])
    hand = (1.0 + 0.25 + 4.0) / 3
    assert float(loss_function("mse", "regression", 1)(out, y)) == pytest.approx(hand)


def test_cross_entropy_on_sequences_flattens_over_time() -> None:
    gen = torch.Generator().manual_seed(0)
    out = torch.randn(4, 6, 5, generator=gen)  # (batch, time, classes)
    y = torch.randint(0, 5, (4, 6), generator=gen)
    reference = F.cross_entropy(out.reshape(24, 5), y.reshape(24))
    by_hand = -torch.log_softmax(out, dim=-1).gather(-1, y[..., None]).mean()
    got = loss_function("cross_entropy", "classification", 5)(out, y)
    assert float(got) == pytest.approx(float(reference), rel=1e-6)
    assert float(got) == pytest.approx(float(by_hand), rel=1e-6)


def test_auto_picks_the_loss_by_task() -> None:
    gen = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(8, 3, generator=gen), torch.randint(0, 3, (8,), generator=gen)
    ce = float(F.cross_entropy(logits, labels))
    mse_one_hot = float(((logits - F.one_hot(labels, 3).float()) ** 2).mean())
    assert ce != pytest.approx(mse_one_hot)  # the two choices are told apart
    assert float(loss_function("auto", "classification", 3)(logits, labels)) == pytest.approx(ce)

    out, y = torch.randn(8, 1, generator=gen), torch.randn(8, 1, generator=gen)
    mse = float(((out - y) ** 2).mean())
    assert float(loss_function("auto", "regression", 1)(out, y)) == pytest.approx(mse)


SETTINGS = {"lr": 0.123, "momentum": 0.5, "betas": (0.8, 0.95), "eps": 1e-6,
            "weight_decay": 0.01, "alpha": 0.9}
# What each optimiser is expected to carry from SETTINGS (a hand-written table).
EXPECTED: dict[str, tuple[type, dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"lr": 0.123, "momentum": 0.5, "weight_decay": 0.01,
                              "nesterov": False}),
    "adam": (torch.optim.Adam, {"lr": 0.123, "betas": (0.8, 0.95), "eps": 1e-6,
                                "weight_decay": 0.01}),
    "adamw": (torch.optim.AdamW, {"lr": 0.123, "betas": (0.8, 0.95), "eps": 1e-6,
                                  "weight_decay": 0.01}),
    "rmsprop": (torch.optim.RMSprop, {"lr": 0.123, "alpha": 0.9, "eps": 1e-6, "momentum": 0.5,
                                      "weight_decay": 0.01}),
    "adagrad": (torch.optim.Adagrad, {"lr": 0.123, "eps": 1e-6, "weight_decay": 0.01}),
}


def test_the_table_covers_every_optimiser() -> None:
    assert set(EXPECTED) == set(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_optimiser_builds_with_its_settings(name: str) -> None:
    kind, wanted = EXPECTED[name]
    params = [torch.nn.Parameter(torch.zeros(3, 2))]
    opt = build_optimizer(params, TrainConfig(optimizer=name, **SETTINGS))  # type: ignore[arg-type]
    assert type(opt) is kind
    group = opt.param_groups[0]
    assert group["params"] == params
    for key, value in wanted.items():
        got = tuple(group[key]) if isinstance(value, tuple) else group[key]
        assert got == value, key


def test_sgd_carries_nesterov() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    opt = build_optimizer(params, TrainConfig(optimizer="sgd", momentum=0.9, nesterov=True))
    assert opt.param_groups[0]["nesterov"] is True and opt.param_groups[0]["momentum"] == 0.9


def test_an_optimiser_step_uses_the_configured_lr() -> None:
    # one plain SGD step: w ← w − lr · g, with g = 2w for the loss Σ w²
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = build_optimizer([w], TrainConfig(optimizer="sgd", lr=0.25))
    (w ** 2).sum().backward()
    opt.step()
    assert w.detach().tolist() == pytest.approx([0.5, -1.0])
