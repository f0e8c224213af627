"""Faithful measurements: every recorded norm against a float64 recomputation, where float32
sums of squares underflow (entries near 1e-20 and denormals) or overflow (entries near 1e30);
the backward signal δ_l against a bare torch loop and mean-field theory; clipping, "not
measured" and non-finite values on the record; batch norm's first evaluation.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, tiny_config
from rich.console import Console
from torch import nn
from torch.nn import functional as F

from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.build.probed import ProbedLayer
from gradlab.config import load_config
from gradlab.record.reader import read_record
from gradlab.render.report import header as report_header
from gradlab.runner import denormals_flushed, run_config
from gradlab.train.loop import batches
from gradlab.train.probe import Probe


def probe_rows(grads: list[torch.Tensor]) -> list[dict[str, Any]]:
    """The probe's rows for parameters whose gradients are exactly `grads`."""
    params = [nn.Parameter(torch.ones_like(g)) for g in grads]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    layers = [ProbedLayer(f"p{i}", p) for i, p in enumerate(params)]
    probe = Probe(layers, every=1, last_step=0)
    probe.before_forward(0)
    probe.after_backward(0)
    rows = probe.after_step(0)
    assert rows is not None
    return rows


@pytest.mark.parametrize("entry", [1e-30, 1e-44, 1e30, 3e38])
def test_norms_of_tiny_denormal_and_huge_entries_equal_a_float64_reference(entry: float) -> None:
    with denormals_flushed(False):
        g = torch.full((100, 100), entry, dtype=torch.float32)
        g[0, 0] = -entry  # a sign, for the abs-max
        assert g.abs().min() > 0  # the premise: the float32 entries themselves are not 0
        [row] = probe_rows([g])
        reference = torch.linalg.vector_norm(g.double()).item()
        assert row["grad_norm"] == pytest.approx(reference, rel=1e-12)
        assert row["grad_norm"] > 0 and math.isfinite(row["grad_norm"])
        assert row["grad_rms"] == pytest.approx(reference / 100, rel=1e-12)
        assert row["grad_absmax"] == pytest.approx(g.abs().max().double().item(), rel=1e-12)
        plain = torch.linalg.vector_norm(g).item()  # what a float32 norm makes of them
        if entry < 1e-19 or entry > 1e19:
            assert plain == 0 or not math.isfinite(plain)


def test_a_norm_is_0_only_when_every_entry_is_and_inf_only_when_one_is() -> None:
    rows = probe_rows([torch.zeros(3, 3), torch.tensor([[1.0, math.inf]]),
                       torch.tensor([[1.0, math.nan]])])
    assert rows[0]["grad_norm"] == 0
    assert rows[1]["grad_norm"] == math.inf
    assert math.isnan(rows[2]["grad_norm"])


def step_zero_gradients(cfg: Any) -> list[torch.Tensor]:
    """The float32 gradients of the first minibatch at init, seeded as a run seeds them."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    idx = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed, torch.device("cpu")))
    F.mse_loss(built.model(data.x_train[idx]), data.y_train[idx]).backward()
    return [p.weight.grad.detach().clone() for p in built.layers]


# deep_sigmoid's net made 50 × 100 on a regression task: gradients down to ~1e-42, where float32
# squares underflow and denormals matter
DEEPER = ["train.steps=1", "data={kind: teacher, n_samples: 2048, n_features: 100}",
          "model.width=100", "train.loss=auto", "probe.every=1"]


@pytest.mark.parametrize("overrides", [
    [*DEEPER, "model.depth=50"],
    [*DEEPER, "model.depth=30", "flush_denormal=false"],
], ids=["sigmoid_50", "sigmoid_30"])
def test_every_layer_with_a_nonzero_entry_has_its_true_norm(overrides, tmp_path) -> None:
    cfg = load_config(CONFIGS / "deep_sigmoid.yaml", overrides)
    torch.set_num_threads(1)
    outcome = run_config(cfg, tmp_path)
    recorded = [r for r in read_record(outcome.path).layers if r["step"] == 0]
    with denormals_flushed(cfg.flush_denormal):
        grads = step_zero_gradients(cfg)
    nonzero = 0
    for row, g in zip(recorded, grads, strict=True):
        reference = torch.linalg.vector_norm(g.double()).item()
        if g.abs().max() > 0:
            nonzero += 1
            assert row["grad_norm"] > 0, row["name"]
            assert row["grad_norm"] == pytest.approx(reference, rel=1e-5), row["name"]
        else:
            assert row["grad_norm"] == 0
    assert nonzero == len(grads)  # without flushing, no layer's gradient is exactly 0
    # the layers whose every entry is denormal are counted, and the report says so
    tiny = torch.finfo(torch.float32).tiny
    denormal = sum(1 for g in grads if 0 < g.abs().max().item() < tiny)
    assert denormal > 0 if cfg.model.depth == 50 else denormal == 0
    record = read_record(outcome.path)
    assert record.summary["denormal_layers"] == denormal
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(report_header(record))
    said = " ".join(console.export_text().split())
    assert (f"{denormal} layers' gradients were denormal" in said) == (denormal > 1), said
    # and the decay is smooth: no cliff where float32 squares used to underflow
    logs = [math.log10(r["grad_norm"]) for r in recorded[:-1]]
    assert max(abs(b - a) for a, b in zip(logs, logs[1:])) < 2.0


def test_a_flushing_run_counts_the_layers_it_zeroed_instead(tmp_path) -> None:
    cfg = load_config(CONFIGS / "deep_sigmoid.yaml",
                      [*DEEPER, "model.depth=50", "flush_denormal=true"])
    torch.set_num_threads(1)
    summary = read_record(run_config(cfg, tmp_path).path).summary
    with denormals_flushed(True) as flushed:
        grads = step_zero_gradients(cfg)
    assert summary["flush_denormal"] is flushed
    if flushed:  # the CPU flushes: the layers whose gradient became 0, and no denormal left
        zeroed = sum(1 for g in grads if g.abs().max() == 0)
        assert zeroed > 0 and summary["flushed_zero_layers"] == zeroed
        assert summary["denormal_layers"] is None
    else:  # a CPU that cannot flush keeps IEEE arithmetic, and the record says that
        assert summary["flushed_zero_layers"] is None and summary["denormal_layers"] > 0


def test_a_huge_but_finite_gradient_is_not_a_divergence(tmp_path) -> None:
    """100 post-activation He residual blocks: gradients near 1e19, all finite; a float32 norm
    of them overflows, which used to be reported as a NaN/Inf at step 0."""
    cfg = tiny_config(model={"depth": 201, "width": 32, "activation": "relu", "residual": True,
                             "residual_style": "post", "init": "kaiming_normal"},
                      train={"steps": 1, "lr": 1e-30}, probe={"every": 1})
    outcome = run_config(cfg, tmp_path)
    [row] = [r for r in read_record(outcome.path).metrics if r["step"] == 0]
    assert row["grad_norm"] > 3.4e38 ** 0.5  # beyond what float32 squares can hold
    assert math.isfinite(row["grad_norm"])
    where = outcome.summary["first_nonfinite"]
    assert where is None or where["step"] > 0, where


def test_the_backward_signal_matches_a_bare_loop_and_mean_field_theory() -> None:
    """A tanh net in the ordered phase (σw² = 1/3, zero biases): ‖∂L/∂z_l‖ falls by √χ₁ per
    layer, with χ₁ = σw² φ'(0)² = 1/3, a slope of ln √(1/3) = −0.549."""
    width, depth = 256, 16
    cfg = tiny_config(data={"kind": "teacher", "n_samples": 512, "n_features": width},
                      model={"depth": depth, "width": width, "activation": "tanh",
                             "init": {"scheme": "normal", "std": math.sqrt(1 / 3 / width)},
                             "bias_init": "zeros"},
                      train={"batch_size": 256})
    torch.manual_seed(0)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    net: Any = built.model
    probe = Probe(built.layers, every=1, last_step=0)
    x, y = data.x_train[:256], data.y_train[:256]
    probe.before_forward(0)
    F.mse_loss(net(x), y).backward()
    probe.after_backward(0)
    rows = probe.after_step(0)
    assert rows is not None
    # the bare loop: the same weights, z_l kept with retain_grad
    h, zs = x, []
    for linear in net.linears:
        z = F.linear(h, linear.weight, linear.bias)
        z.retain_grad()
        zs.append(z)
        h = torch.tanh(z)
    F.mse_loss(F.linear(h, net.head.weight, net.head.bias), y).backward()
    bare = [torch.linalg.vector_norm(z.grad.double()).item() for z in zs]
    assert [r["delta_norm"] for r in rows[:-1]] == pytest.approx(bare, rel=1e-6)
    logs = [math.log(d) for d in bare[3:]]  # past the first layers' transient
    growth = (logs[-1] - logs[0]) / (len(logs) - 1)  # ln δ per layer, towards the output
    assert growth == pytest.approx(-math.log(math.sqrt(1 / 3)), rel=0.15)  # 0.549


def test_clipping_is_on_the_record(tmp_path) -> None:
    cfg = tiny_config(train={"steps": 10, "lr": 0.01, "clip": {"max_norm": 0.05}},
                      probe={"every": 1})
    outcome = run_config(cfg, tmp_path)
    rows = read_record(outcome.path).metrics
    assert all(r["clipped"] == 1 for r in rows)  # the tiny net's norm is well above 0.05
    assert all(r["grad_norm_clipped"] == pytest.approx(0.05, rel=1e-4) for r in rows)
    assert all(r["grad_norm"] > 0.05 for r in rows)
    assert outcome.summary["clip"] == {"steps_clipped": 10, "steps": 10, "fraction": 1.0}
    assert outcome.summary["clip_fraction"] == 1.0
    plain = run_config(tiny_config(), tmp_path)
    assert plain.summary["clip"] is None
    assert all(r["grad_norm_clipped"] is None for r in read_record(plain.path).metrics)


def test_a_diverged_step_is_not_marked_clipped(tmp_path) -> None:
    cfg = tiny_config(model={"activation": "relu", "init": {"scheme": "normal", "std": 3.0}},
                      train={"lr": 50.0, "steps": 30, "clip": {"max_norm": 1e30}},
                      probe={"every": 1})
    outcome = run_config(cfg, tmp_path)
    assert outcome.summary["status"] == "diverged"
    last = read_record(outcome.path).metrics[-1]
    assert not math.isfinite(last["grad_norm"])  # its norm is above any threshold...
    assert last["clipped"] == 0  # ...but clipping never ran on it


def test_not_measured_is_empty_and_a_measured_nan_is_nan(tmp_path) -> None:
    cfg = tiny_config(model={"activation": "tanh"})
    outcome = run_config(cfg, tmp_path)
    with (outcome.path / "layers.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    head = [r for r in rows if r["name"] == "head"][0]
    assert head["act_mean"] == "" and head["act_std"] == ""  # the head has no activation
    assert all(r["act_dead"] == "" for r in rows)  # tanh units cannot die
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["layers"][-1]["init"]["act_std"] is None
    # a measured non-finite value survives the JSON round trip as itself, not as null
    from gradlab.record.files import clean, decode

    assert clean({"grad_norm": math.inf, "x": math.nan, "y": None}) == {
        "grad_norm": "inf", "x": "nan", "y": None}
    back = decode(clean({"grad_norm": -math.inf, "name": "nan"}))
    assert back["grad_norm"] == -math.inf and back["name"] == "nan"


def test_the_report_prints_a_measured_nan_as_nan_and_only_not_measured_as_a_dash(tmp_path):
    """A forward pass that overflows (σw 1000, 8 layers) makes the loss Inf and every gradient
    NaN or Inf: measured, and printed `nan`/`inf`; the head's activation was never measured:
    `–`."""
    from gradlab.render.report import layer_table
    from gradlab.render.style import num

    assert (num(math.nan), num(None), num(math.inf), num(-math.inf)) == ("nan", "–", "inf", "-inf")
    cfg = tiny_config(model={"depth": 8, "activation": "relu",
                             "init": {"scheme": "normal", "std": 1000.0}}, train={"steps": 5})
    record = read_record(run_config(cfg, tmp_path).path)
    assert record.status == "diverged"
    first = [r for r in record.layers if r["step"] == 0]
    assert math.isnan(first[0]["grad_norm"]) and math.isinf(record.metrics[0]["loss"])  # premise
    assert not any(math.isfinite(r["grad_norm"]) for r in first)
    console = Console(width=120, record=True)
    console.print(report_header(record))
    console.print(layer_table(record, all_layers=True))
    text = console.export_text()
    assert "grad ratio first/last layer: nan at init" in text
    assert "loss inf →" in text
    rows = {line.split()[1]: line.split() for line in text.splitlines()
            if line.split()[:1] and line.split()[0].isdigit()}
    assert rows["fc1"][3:6] == ["nan", "nan", "nan"]  # grad init, end, RMS
    assert rows["head"][-1] == "–"  # the head's activation: not measured


def test_batch_norms_first_evaluation_uses_batch_statistics(tmp_path) -> None:
    """Empty running statistics (mean 0, variance 1) made a deep BN net's first loss read 1e18."""
    cfg = tiny_config(model={"depth": 30, "width": 32, "activation": "relu", "norm": "batch",
                             "init": "kaiming_normal"}, train={"steps": 1})
    outcome = run_config(cfg, tmp_path)
    first = read_record(outcome.path).metrics[0]["loss"]  # the first minibatch, in train mode
    assert outcome.summary["initial_loss"] == pytest.approx(first, rel=0.5)
    # and the buffers the evaluation used were given back: training starts from empty ones
    torch.manual_seed(0)
    built = build_model(cfg.model, 8, 1)
    assert all(float(m.running_mean.abs().sum()) == 0 for m in built.model.modules()
               if isinstance(m, nn.BatchNorm1d))


def test_flushing_runs_on_one_thread_so_every_value_is_flushed() -> None:
    """torch.set_flush_denormal acts on the calling thread; its intra-op workers keep IEEE
    arithmetic, so a flushing run computes on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with denormals_flushed(True) as flushed:
            y = torch.full((4_000_000,), 1e-30) * 1e-10  # large enough to split over threads
            if flushed:
                assert torch.get_num_threads() == 1
                assert int((y != 0).sum()) == 0
            else:  # a CPU that cannot flush says so, and keeps both threads and every value
                assert torch.get_num_threads() == 2
                assert int((y != 0).sum()) == y.numel()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


# ---------------------------------------------------------------- knobs


def test_bias_normal_head_init_and_depth_zero_build_what_they_say(tmp_path) -> None:
    cfg = tiny_config(model={"depth": 3, "width": 64, "bias_init": {"scheme": "normal",
                                                                    "std": 0.5},
                             "head_init": {"scheme": "zeros"}})
    torch.manual_seed(0)
    net: Any = build_model(cfg.model, 8, 1).model
    biases = torch.cat([lin.bias for lin in net.linears]).detach()
    assert biases.std().item() == pytest.approx(0.5, rel=0.15)
    assert not net.head.weight.any()
    linear = run_config(tiny_config(model={"depth": 0}), tmp_path)
    assert linear.summary["status"] == "completed"
    assert [layer["name"] for layer in linear.summary["layers"]] == ["head"]


def test_a_file_dataset_can_bring_its_own_test_split(tmp_path: Path) -> None:
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    train.write_text("a,b,y\n" + "".join(f"{i},{i % 3},{2 * i}\n" for i in range(40)))
    test.write_text("a,b,y\n" + "".join(f"{i},{i % 5},{2 * i}\n" for i in range(100, 110)))
    from conftest import tiny as raw

    from gradlab.config import config_from_dict

    mapping = raw(train={"steps": 2, "batch_size": 8})
    mapping["data"] = {"kind": "file", "path": str(train), "target": "y", "test_path": str(test)}
    cfg = config_from_dict(mapping)
    data = load_data(cfg.data, cfg.seed)
    assert len(data.x_train) == 40 and len(data.x_test) == 10
    # standardised with the training split's statistics only
    assert data.x_train[:, 0].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert data.x_test[:, 0].mean().item() > 5


def test_a_key_the_scheme_does_not_use_is_an_error(write_yaml) -> None:
    from conftest import tiny as raw

    from gradlab.config import ConfigError

    path = write_yaml(raw(model={"init": {"scheme": "kaiming_normal", "std": 0.3}}))
    with pytest.raises(ConfigError, match=r"model.init: std: not used by scheme kaiming_normal "
                                          r"\(it takes gain, mode, nonlinearity\)"):
        load_config(path)
    # kaiming reads gain: --set model.init.gain=0.1 changes the weights
    a = load_config(path.with_name("k.yaml") if False else write_yaml(raw(model={
        "init": "kaiming_normal"}), "k.yaml"))
    b = load_config(write_yaml(raw(model={"init": "kaiming_normal"}), "k2.yaml"),
                    ["model.init.gain=0.1"])
    torch.manual_seed(0)
    wa = build_model(a.model, 8, 1).layers[1].weight.detach()
    torch.manual_seed(0)
    wb = build_model(b.model, 8, 1).layers[1].weight.detach()
    assert torch.allclose(wb, 0.1 * wa)


def test_the_resolved_config_of_a_run_loads_again(tmp_path) -> None:
    outcome = run_config(tiny_config(model={"init": "kaiming_normal"}), tmp_path)
    from gradlab.config import load_config as load

    again = load(outcome.path / "config.yaml")
    assert again.model.init.scheme == "kaiming_normal"
