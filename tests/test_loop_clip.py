"""Gradient clipping in the training loop: `measure_step` and `clip_gradients` against a hand
clamp and against torch's clip_grad_norm_ on a copy; when `clipped` fires; NaN/Inf detection.
"""

from __future__ import annotations

import math

import pytest
import torch

from gradlab.config import ClipConfig
from gradlab.train.loop import clip_gradients, measure_step


def make_params() -> list[torch.nn.Parameter]:
    """Three parameters with known gradients (max |g| = 4.0, 2-norm √(Σ g²)) and one without."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.zeros(5, 4)), torch.nn.Parameter(torch.zeros(3)),
              torch.nn.Parameter(torch.zeros(2, 2)), torch.nn.Parameter(torch.zeros(7))]
    for p in params[:3]:
        p.grad = 1.2 * torch.randn(p.shape, generator=gen)
    params[1].grad[1] = -4.0  # type: ignore[index]
    return params


def grads(params: list[torch.nn.Parameter]) -> list[torch.Tensor]:
    return [p.grad.clone() for p in params if p.grad is not None]


def hand_norm(gs: list[torch.Tensor], p: float) -> float:
    flat = torch.cat([g.flatten() for g in gs]).double()
    return float(flat.abs().max()) if p == math.inf else float((flat.abs() ** p).sum() ** (1 / p))


LOSS = torch.tensor(0.75)


@pytest.mark.parametrize("max_value", [0.5, 2.0, 3.99, 4.01, 10.0])
def test_clip_by_value_clamps_every_entry(max_value: float) -> None:
    params = make_params()
    before = grads(params)
    clip = ClipConfig(by="value", max_value=max_value)
    m = measure_step(LOSS, params, clip)
    assert m.loss == pytest.approx(0.75)
    assert m.grad_norm == pytest.approx(hand_norm(before, 2), rel=1e-5)  # always the 2-norm
    assert hand_norm(before, math.inf) == 4.0
    assert m.clipped is (4.0 > max_value)
    assert all(torch.equal(a, b) for a, b in zip(grads(params), before))  # measuring clips nothing
    clip_gradients(params, clip, m)
    for got, g in zip(grads(params), before):
        hand = torch.tensor([min(max(v, -max_value), max_value) for v in g.flatten().tolist()])
        assert torch.allclose(got.flatten(), hand)
    assert params[3].grad is None


@pytest.mark.parametrize("norm_type", [2.0, math.inf, 1.0], ids=["l2", "inf", "l1"])
@pytest.mark.parametrize("below", [True, False], ids=["below", "above"])
def test_clip_by_norm_matches_torch(norm_type: float, below: bool) -> None:
    params = make_params()
    before = grads(params)
    norm = hand_norm(before, norm_type)
    max_norm = norm * (1.5 if below else 0.25)
    clip = ClipConfig(by="norm", max_norm=max_norm, norm_type=norm_type)
    m = measure_step(LOSS, params, clip)
    assert m.clipped is (not below)
    assert float(m.clip_norm) == pytest.approx(norm, rel=1e-5)
    assert m.grad_norm == pytest.approx(hand_norm(before, 2), rel=1e-5)
    clip_gradients(params, clip, m)

    copies = [torch.nn.Parameter(torch.zeros_like(g)) for g in before]
    for c, g in zip(copies, before):
        c.grad = g.clone()
    reference = torch.nn.utils.clip_grad_norm_(copies, max_norm, norm_type=norm_type)
    assert float(reference) == pytest.approx(norm, rel=1e-5)
    for got, c in zip(grads(params), copies):
        assert c.grad is not None and torch.allclose(got, c.grad, rtol=1e-6, atol=1e-7)
    after = hand_norm(grads(params), norm_type)
    assert after == pytest.approx(min(norm, max_norm), rel=1e-5)


def test_clipped_fires_exactly_above_the_threshold() -> None:
    params = make_params()
    norm = hand_norm(grads(params), 2)
    for factor, fires in ((0.999, True), (1.001, False), (10.0, False), (0.01, True)):
        m = measure_step(LOSS, params, ClipConfig(by="norm", max_norm=norm * factor))
        assert m.clipped is fires, factor


def test_no_clip_leaves_gradients_alone() -> None:
    params = make_params()
    before = grads(params)
    m = measure_step(LOSS, params, None)
    clip_gradients(params, None, m)
    assert m.clipped is False and m.finite
    assert m.grad_norm == pytest.approx(hand_norm(before, 2), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(grads(params), before))


@pytest.mark.parametrize("clip", [None, ClipConfig(), ClipConfig(by="value"),
                                  ClipConfig(norm_type=math.inf)],
                         ids=["none", "norm", "value", "inf_norm"])
@pytest.mark.parametrize("bad", ["nan_grad", "inf_grad", "nan_loss"])
def test_non_finite_makes_the_step_not_finite(clip: ClipConfig | None, bad: str) -> None:
    params = make_params()
    loss = LOSS
    if bad == "nan_grad":
        params[0].grad[2, 1] = float("nan")  # type: ignore[index]
    elif bad == "inf_grad":
        params[2].grad[0, 0] = float("inf")  # type: ignore[index]
    else:
        loss = torch.tensor(float("nan"))
    m = measure_step(loss, params, clip)
    assert m.finite is False


def test_finite_step_is_finite() -> None:
    assert measure_step(LOSS, make_params(), ClipConfig()).finite is True
