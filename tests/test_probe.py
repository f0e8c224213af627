"""The probe's per-layer statistics against an independent hand computation on the same model
and batch, and the textbook contrast: a 50-layer sigmoid net's first-layer gradient vanishes,
ReLU with He initialisation keeps it within two orders of magnitude of the last layer's.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from conftest import CONFIGS, tiny_config
from torch.linalg import vector_norm
from torch.nn import functional as F

from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.build.probed import ProbedLayer
from gradlab.config import load_config
from gradlab.record.reader import read_record
from gradlab.runner import run_config
from gradlab.train.loop import batches
from gradlab.train.probe import Probe

# A (model, activation) where the unit statistics are not trivially zero: large tanh weights
# saturate; a negative ReLU bias kills some units for a whole batch.
CASES = {
    "tanh": {"activation": "tanh", "init": {"scheme": "normal", "std": 0.6}},
    "relu": {"activation": "relu", "init": "kaiming_normal",
             "bias_init": {"scheme": "constant", "value": -0.4}},
}


def hand_activations(model: torch.nn.Module, x: torch.Tensor, activation: str) -> list[torch.Tensor]:
    """Each hidden layer's output, computed layer by layer with torch.nn.functional."""
    act = {"tanh": torch.tanh, "relu": F.relu}[activation]
    outs, h = [], x
    for linear in model.linears:  # type: ignore[attr-defined]
        h = act(F.linear(h, linear.weight, linear.bias))  # (batch, width)
        outs.append(h)
    return outs


def tiny_model(case: str) -> tuple[Any, list[ProbedLayer], torch.Tensor, torch.Tensor]:
    """The tiny model of a case, and a batch of 16 examples."""
    cfg = tiny_config(model=CASES[case])
    torch.manual_seed(0)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, layers = built.model, built.layers
    return model, layers, data.x_train[:16], data.y_train[:16]


@pytest.mark.parametrize("case", sorted(CASES))
def test_probe_matches_a_hand_computation(case: str) -> None:
    model, layers, x, y = tiny_model(case)
    probe = Probe(layers, every=1, last_step=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)

    probe.before_forward(0)
    F.mse_loss(model(x), y).backward()
    probe.after_backward(0)
    grads = [p.weight.grad.clone() for p in layers]
    before = [p.weight.detach().clone() for p in layers]
    optimizer.step()
    rows = probe.after_step(0)

    assert rows is not None and [r["name"] for r in rows] == ["fc1", "fc2", "fc3", "fc4", "head"]
    for row, g, w0, layer in zip(rows, grads, before, layers):
        assert row["grad_norm"] == pytest.approx(vector_norm(g).item(), rel=1e-5)
        assert row["grad_rms"] == pytest.approx(g.pow(2).mean().sqrt().item(), rel=1e-5)
        assert row["grad_absmax"] == pytest.approx(g.abs().max().item(), rel=1e-6)
        assert row["weight_norm"] == pytest.approx(vector_norm(w0).item(), rel=1e-6)
        update = vector_norm(layer.weight.detach() - w0) / vector_norm(w0)
        assert row["update_ratio"] == pytest.approx(update.item(), rel=1e-4)
        # SGD moved each weight by lr × its gradient: the ratio is also 0.5‖g‖/‖W‖
        assert row["update_ratio"] == pytest.approx(0.5 * row["grad_norm"] / row["weight_norm"],
                                                    rel=1e-3)


@pytest.mark.parametrize("case", sorted(CASES))
def test_activation_statistics_match_a_hand_computation(case: str) -> None:
    model, layers, x, y = tiny_model(case)
    probe = Probe(layers, every=1, last_step=0)
    with torch.no_grad():
        hidden = hand_activations(model, x, case)

    probe.before_forward(0)
    F.mse_loss(model(x), y).backward()
    probe.after_backward(0)
    rows = probe.after_step(0)

    assert rows is not None
    units = []
    for row, h in zip(rows, hidden):
        assert row["act_mean"] == pytest.approx(h.mean().item(), rel=1e-5, abs=1e-7)
        assert row["act_std"] == pytest.approx(h.std().item(), rel=1e-5)
        if case == "tanh":
            assert row["act_saturated"] == pytest.approx((h.abs() > 0.99).float().mean().item())
            assert row["act_dead"] is None  # not measured: tanh units do not die
            units.append(row["act_saturated"])
        else:
            assert row["act_dead"] == pytest.approx((h <= 0).all(dim=0).float().mean().item())
            assert row["act_saturated"] is None  # not measured: ReLU units do not saturate
            units.append(row["act_dead"])
    assert max(units) > 0, "the case should exercise a non-zero unit statistic"
    assert all(rows[-1][k] is None for k in ("act_mean", "act_std"))  # the head: not measured


def test_recorded_step_zero_matches_a_hand_computation(run_tiny) -> None:
    """layers.csv at step 0 holds the gradient norms of the model at init on the first batch."""
    outcome = run_tiny()
    rows = [r for r in read_record(outcome.path).layers if r["step"] == 0]
    cfg = tiny_config()
    torch.manual_seed(cfg.seed)  # the runner's seeding: data, then the model
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, layers = built.model, built.layers
    idx = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed, torch.device("cpu")))
    F.mse_loss(model(data.x_train[idx]), data.y_train[idx]).backward()

    expected = [vector_norm(p.weight.grad).item() for p in layers]
    assert [r["grad_norm"] for r in rows] == pytest.approx(expected, rel=1e-5)
    assert outcome.summary["grad_ratio_init"] == pytest.approx(expected[0] / expected[-1], rel=1e-5)


def _init_grads(name: str, tmp_path) -> dict:
    cfg = load_config(CONFIGS / f"{name}.yaml", ["train.steps=1", "probe.activations=false"])
    return run_config(cfg, tmp_path / "runs").summary


def test_deep_sigmoid_vanishes_while_relu_he_does_not(tmp_path) -> None:
    sigmoid = _init_grads("deep_sigmoid", tmp_path)
    relu = _init_grads("deep_relu_he", tmp_path)
    depth = load_config(CONFIGS / "deep_sigmoid.yaml").model.depth
    for s in (sigmoid, relu):
        assert len(s["layers"]) == depth + 1 and s["status"] == "completed"

    first, last = (sigmoid["layers"][i]["init"]["grad_norm"] for i in (0, -1))
    assert last > 0.1
    assert first < 1e-6 * last  # at least six orders of magnitude apart (in fact it underflows)
    assert sigmoid["grad_ratio_init"] < 1e-6
    assert "vanishing" in [v["kind"] for v in sigmoid["verdicts"]]

    assert 1e-2 < relu["grad_ratio_init"] < 1e2
    norms = [layer["init"]["grad_norm"] for layer in relu["layers"]]
    assert min(norms) > 1e-2 * max(norms)  # every layer, not just the two ends
    assert "vanishing" not in [v["kind"] for v in relu["verdicts"]]


def test_scratch_keeps_buffers_up_to_its_limit_and_hands_out_fresh_ones_beyond() -> None:
    """Buffers the probe keeps between logged steps stay allocated while training runs, so only
    up to `limit` bytes are kept; beyond it each call gets a tensor of its own."""
    from gradlab.train.probe import Scratch

    scratch = Scratch(limit=1000)
    cpu = torch.device("cpu")
    a = scratch.get("a", (100,), torch.float64, cpu)  # 800 bytes: kept
    assert scratch.get("a", (100,), torch.float64, cpu) is a
    b = scratch.get("b", (100,), torch.float64, cpu)  # 800 more would pass the limit
    assert scratch.get("b", (100,), torch.float64, cpu) is not b
    assert scratch.get("c", (50,), torch.bool, cpu) is scratch.get("c", (50,), torch.bool, cpu)
    assert scratch.get("a", (101,), torch.float64, cpu) is not a  # another shape, another key


@pytest.mark.parametrize("kind", ["sigmoid", "tanh", "relu", None])
def test_activation_stats_are_the_same_in_kept_fresh_or_no_buffers(kind: str | None) -> None:
    from gradlab.train.probe import Scratch, activation_stats

    g = torch.Generator().manual_seed(0)
    hs = [torch.randn(16, 12, generator=g) * 3 for _ in range(5)]
    if kind == "sigmoid":
        hs = [torch.sigmoid(h) for h in hs]
    elif kind == "tanh":
        hs = [torch.tanh(h) for h in hs]
    before = [h.clone() for h in hs]
    plain = activation_stats(torch.stack(hs), kind)
    kept = Scratch()
    for scratch in (kept, kept, Scratch(limit=0)):  # kept twice: the buffers are reused
        assert torch.equal(activation_stats(hs, kind, scratch).nan_to_num(-1),
                           plain.nan_to_num(-1))
    assert all(torch.equal(h, b) for h, b in zip(hs, before))  # the inputs are never changed
    if kind == "tanh":  # |h| > 0.99, as two comparisons
        by_hand = torch.stack([(h.double().abs() > 0.99).double().mean() for h in hs])
        assert torch.equal(plain[:, 2], by_hand)
