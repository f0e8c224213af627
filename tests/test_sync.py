"""Probing has no per-layer host synchronisation: counting the calls that copy to the host.

Every `.item()`, `.cpu()`, `.tolist()`, `.numpy()` and `float()`/`int()`/`bool()` of a tensor
waits for the device. The probe may make a fixed few per logged step, whatever the depth.
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import read_csv, tiny, tiny_config

from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.config import ConfigError, config_from_dict
from gradlab.runner import run_config
from gradlab.train.probe import Probe

SYNCS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


@contextmanager
def counting_syncs() -> Iterator[Counter]:
    """Count each host-synchronising Tensor method called while the block runs."""
    counts: Counter = Counter()
    originals = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def counted(name: str) -> Any:
        original = originals[name]

        def method(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return original(self, *args, **kwargs)

        return method

    for name in SYNCS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_the_counter_sees_a_per_layer_item_loop() -> None:
    weights = [torch.ones(3) for _ in range(5)]
    item = torch.Tensor.item
    with counting_syncs() as counts:
        [w.norm().item() for w in weights]
        float(weights[0].sum())
    assert counts == {"item": 5, "__float__": 1}
    assert torch.Tensor.item is item and torch.ones(1).item() == 1.0  # restored


def probed_step_syncs(depth: int) -> tuple[Counter, Counter, int]:
    """Syncs in after_backward and in after_step of one logged step of a `depth`-layer MLP."""
    cfg = tiny_config(model={"depth": depth, "width": 16, "activation": "relu"})
    torch.manual_seed(0)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, layers = built.model, built.layers
    probe = Probe(layers, every=1, last_step=0, activations=True)
    probe.before_forward(0)
    loss = torch.nn.functional.mse_loss(model(data.x_train), data.y_train)
    loss.backward()
    with counting_syncs() as backward:
        probe.after_backward(0)
    with torch.no_grad():
        for p in model.parameters():
            p -= 0.01 * p.grad
    with counting_syncs() as step:
        rows = probe.after_step(0)
    assert rows is not None and len(rows) == depth + 1
    assert all(r["act_mean"] == r["act_mean"] for r in rows[:-1])  # activations were read
    return backward, step, len(rows)


def test_a_probed_step_fetches_all_layers_in_one_transfer_whatever_the_depth() -> None:
    shallow_backward, shallow_step, _ = probed_step_syncs(3)
    deep_backward, deep_step, _ = probed_step_syncs(12)
    # statistics stay on the device; on the CPU, where no device waits, the quantiles' samples
    # are sorted through one NumPy view (`probe.nanquantiles`; on a GPU torch sorts them)
    assert shallow_backward == deep_backward == Counter({"numpy": 1})
    assert shallow_step == deep_step
    assert sum(deep_step.values()) <= 2  # .cpu() then .tolist() of one flat tensor


def syncs_per_step(tmp_path: Path, model: dict[str, Any], data: dict[str, Any],
                   probe: dict[str, Any] | None = None) -> float:
    """Host syncs per training step with every step probed, fixed costs (the evaluations
    at the start and end) cancelled by differencing a run of 12 steps and one of 6."""
    totals = []
    for steps in (6, 12):
        raw = tiny(model=model, probe=probe or {"every": 1, "activations": True},
                   train={"steps": steps, "eval_every": 1000, "optimizer": "sgd"})
        cfg = config_from_dict({**raw, "data": data})
        with counting_syncs() as counts:
            summary = run_config(cfg, tmp_path / "runs").summary
        assert summary["status"] == "completed" and summary["steps_done"] == steps
        totals.append(sum(counts.values()))
    return (totals[1] - totals[0]) / 6


TINY_DATA = {"kind": "teacher", "n_samples": 64, "n_features": 8}


@pytest.mark.parametrize("kind, depths, data", [
    ("mlp", (3, 12), TINY_DATA),
    ("lstm", (1, 4), {"kind": "adding", "n_samples": 64, "length": 6}),
])
def test_a_training_step_syncs_a_fixed_few_times_whatever_the_depth(
        tmp_path: Path, kind: str, depths: tuple[int, int], data: dict[str, Any]) -> None:
    per_step = [syncs_per_step(tmp_path, {"kind": kind, "depth": d, "width": 8}, data)
                for d in depths]
    assert per_step[0] == per_step[1]
    assert 1 <= per_step[1] <= 4  # the trainer's divergence check + the probe's one fetch


def test_with_probing_off_a_step_syncs_once_and_the_record_has_no_layer_rows(tmp_path: Path) -> None:
    model, data = {"kind": "mlp", "depth": 3, "width": 8}, dict(TINY_DATA)
    assert syncs_per_step(tmp_path, model, data, {"enabled": False}) == 1  # the divergence check
    cfg = tiny_config(probe={"enabled": False})
    outcome = run_config(cfg, tmp_path / "off")
    assert outcome.summary["status"] == "completed" and outcome.summary["layers"] == []
    header, rows = read_csv(outcome.path / "layers.csv")
    assert "grad_norm" in header and rows == []
    _, metrics = read_csv(outcome.path / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == [2, 5, 8, 9]  # evaluations are still logged


def test_probing_off_with_an_expectation_on_probed_fields_is_a_config_error() -> None:
    with pytest.raises(ConfigError) as caught:
        tiny_config(probe={"enabled": False}, expect={"grad_ratio_init": {"max": 1e-6},
                                                      "status": "completed"})
    assert caught.value.problems == [
        ("expect.grad_ratio_init", "needs the probe's per-layer statistics, but probe.enabled is false")]


def test_the_faster_statistics_equal_the_textbook_ones() -> None:
    """max |g|, std and dead fraction are computed without ∞-norms, Tensor.std or .all()."""
    cfg = tiny_config(model={"depth": 4, "width": 16, "activation": "relu",
                             "bias_init": {"scheme": "constant", "value": -0.3}})
    torch.manual_seed(0)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, layers = built.model, built.layers
    probe = Probe(layers, every=1, last_step=0, activations=True)
    hidden: list[torch.Tensor] = []  # each hidden layer's output, kept by a hook of our own
    for act in model.acts:
        act.register_forward_hook(lambda module, inputs, output: hidden.append(output.detach()))
    probe.before_forward(0)
    torch.nn.functional.mse_loss(model(data.x_train), data.y_train).backward()
    probe.after_backward(0)
    rows = probe.after_step(0)
    assert rows is not None
    for row, layer, h in zip(rows, layers, hidden):
        assert row["grad_absmax"] == pytest.approx(layer.weight.grad.abs().max().item(), rel=1e-6)
        assert row["act_std"] == pytest.approx(h.std().item(), rel=1e-5)
        assert row["act_dead"] == pytest.approx((h <= 0).all(dim=0).float().mean().item())
    assert any(r["act_dead"] > 0 for r in rows[:-1])  # the negative bias killed some units
