"""`gradlab.watch`: per-layer statistics of a user's own model equal a hand computation (a CNN
with in-place ReLUs and `out += x`, a Pre-LN Transformer block), the record reads like
`gradlab run`'s, one transfer per logged step, and every misuse is a named `WatchError`.
"""

from __future__ import annotations

import copy
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import read_csv
from test_runner import CONTRACT, LAYER_COLUMNS, LAYER_STATS, METRIC_COLUMNS
from test_sync import counting_syncs
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

import gradlab
from gradlab.cli import app
from gradlab.record.reader import read_record
from gradlab.record.validate import check_summary

F64 = torch.float64


def norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t.detach().to(F64)))


# ---------------------------------------------------------------- models


class Block(nn.Module):
    """A ResNet basic block as torchvision writes it: one in-place ReLU used twice, `+=`."""

    def __init__(self, c: int, inplace: bool = True):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=inplace)
        self.inplace = inplace

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.inplace:
            out += x
        else:
            out = out + x
        return self.relu(out)


class CNN(nn.Module):
    def __init__(self, inplace: bool = True):
        super().__init__()
        self.stem = nn.Conv2d(1, 4, 3, padding=1)
        self.act = nn.ReLU(inplace=inplace)
        self.blocks = nn.Sequential(Block(4, inplace), Block(4, inplace))
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.act(self.stem(x))).mean(dim=(2, 3)))


class PreLN(nn.Module):
    """A Pre-LN Transformer block whose modules are registered out of execution order."""

    def __init__(self, d: int = 8):
        super().__init__()
        self.head = nn.Linear(d, 2)  # registered first, runs last
        self.ff2 = nn.Linear(2 * d, d)
        self.ff1 = nn.Linear(d, 2 * d)
        self.gelu = nn.GELU()
        self.ln2 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln1 = nn.LayerNorm(d)
        self.embed = nn.Embedding(11, d)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        a = self.ln1(h)
        h = h + self.attn(a, a, a, need_weights=False)[0]
        h = h + self.ff2(self.gelu(self.ff1(self.ln2(h))))
        return self.head(h.mean(dim=1))


def one_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tmp_path: Path,
             **options: Any) -> tuple[gradlab.Watch, list[dict[str, str]]]:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = gradlab.watch(model, every=1, out=tmp_path / "runs", optimizer=opt, **options)
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    probe.after_backward(0, loss=loss)
    opt.step()
    probe.after_step(0)
    probe.close()
    return probe, read_csv(probe.path / "layers.csv")[1]


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, activations: dict[str, str]
              ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """By hand, on an un-watched copy: each module's output z and ∂L/∂z (retain_grad), and the
    output of the activation module named for each layer."""
    outputs: dict[str, torch.Tensor] = {}
    acts: dict[str, torch.Tensor] = {}
    names = {m: n for n, m in model.named_modules()}
    calls: list[str] = []

    def keep(module: nn.Module, inputs: Any, output: Any) -> None:
        name = names[module]
        calls.append(name)
        out = output[0] if isinstance(output, tuple) else output
        if name in activations.values():
            layer = next(k for k, v in activations.items() if v == name
                         and k not in acts and calls[-2:-1] == [k])
            acts[layer] = out.detach().clone()
        elif isinstance(out, torch.Tensor) and out.requires_grad:
            out.retain_grad()
            outputs[name] = out

    for m in model.modules():
        m.register_forward_hook(keep)
    F.cross_entropy(model(x), y).backward()
    grads = {n: o.grad for n, o in outputs.items()}
    return outputs, grads, acts


def check_rows(rows: list[dict[str, str]], model: nn.Module, before: dict[str, torch.Tensor],
               grads: dict[str, torch.Tensor], acts: dict[str, torch.Tensor],
               weights: dict[str, str]) -> None:
    params = dict(model.named_parameters())
    for row in rows:
        name = row["name"]
        w_name = weights[name]
        w0, w1 = before[w_name], params[w_name].detach()
        g = params[w_name].grad
        assert float(row["grad_norm"]) == pytest.approx(norm(g), rel=1e-9), name
        assert float(row["grad_rms"]) == pytest.approx(norm(g) / math.sqrt(g.numel()), rel=1e-9)
        assert float(row["grad_absmax"]) == pytest.approx(float(g.abs().max()), rel=1e-6)
        assert float(row["weight_norm"]) == pytest.approx(norm(w0), rel=1e-9), name
        assert float(row["update_ratio"]) == pytest.approx(norm(w1 - w0) / norm(w0), rel=1e-5)
        module = w_name.rsplit(".", 1)[0]
        if name in grads:
            assert float(row["delta_norm"]) == pytest.approx(norm(grads[name]), rel=1e-6), name
        elif module not in grads:
            assert row["delta_norm"] == "", name
        if name in acts:
            h = acts[name].to(F64)
            assert float(row["act_mean"]) == pytest.approx(float(h.mean()), rel=1e-9, abs=1e-12)
            assert float(row["act_std"]) == pytest.approx(float(h.std()), rel=1e-9), name
        else:
            assert row["act_std"] == "", name


def test_a_cnn_with_in_place_relus_and_skips_has_its_hand_computed_norms(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CNN(inplace=True)
    plain = CNN(inplace=False)
    plain.load_state_dict(model.state_dict())
    x, y = torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 2, 0, 1, 2])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    # each layer's activation is the ReLU that runs right after it (bn1, bn2: the block's
    # shared ReLU, bn2's after the skip was added); convolutions feed batch norms: none
    acts = {"stem": "act", **{f"blocks.{b}.bn{k}": f"blocks.{b}.relu" for b in (0, 1)
                              for k in (1, 2)}}
    _, grads, hand_acts = reference(plain, x, y, acts)
    probe, rows = one_step(model, x, y, tmp_path)
    names = ["stem", *(f"blocks.{b}.{m}" for b in (0, 1) for m in ("conv1", "bn1", "conv2", "bn2")),
             "head"]
    assert [r["name"] for r in rows] == names == probe.layers
    check_rows(rows, model, before, grads, hand_acts, {n: f"{n}.weight" for n in names})
    dead = next(r for r in rows if r["name"] == "blocks.0.bn1")
    h = hand_acts["blocks.0.bn1"]
    assert float(dead["act_dead"]) == pytest.approx(float((h.reshape(6, -1) <= 0).all(0).double().mean()))
    assert rows[0]["act_saturated"] == ""  # a ReLU net has dead units, not saturated ones
    # the model is as it was given: no hook left behind
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_transformer_block_has_its_hand_computed_norms_in_execution_order(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = PreLN()
    twin = copy.deepcopy(model)
    x, y = torch.randint(0, 11, (4, 5)), torch.tensor([0, 1, 1, 0])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    outputs, grads, acts = reference(twin, x, y, {"ff1": "gelu"})
    grads["attn.out_proj"] = grads.pop("attn")  # the attention's output is out_proj's z
    probe, rows = one_step(model, x, y, tmp_path)
    assert [r["name"] for r in rows] == ["embed", "ln1", "attn.in_proj", "attn.out_proj", "ln2",
                                         "ff1", "ff2", "head"]
    assert [int(r["layer"]) for r in rows] == list(range(8))
    weights = {"embed": "embed.weight", "ln1": "ln1.weight", "attn.in_proj": "attn.in_proj_weight",
               "attn.out_proj": "attn.out_proj.weight", "ln2": "ln2.weight", "ff1": "ff1.weight",
               "ff2": "ff2.weight", "head": "head.weight"}
    check_rows(rows, model, before, grads, acts, weights)
    assert rows[2]["delta_norm"] == ""  # the packed q/k/v projection has no single output
    assert rows[5]["act_dead"] == rows[5]["act_saturated"] == ""  # GELU: neither applies
    summary = probe.summary or {}
    assert [layer["shape"] for layer in summary["layers"]][:4] == [[11, 8], [8], [24, 8], [8, 8]]


def test_the_record_reads_like_a_gradlab_run_record(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with gradlab.watch(model, every=2, steps=5, out=tmp_path / "runs", name="mine",
                       optimizer=opt, baseline_loss=math.log(2), baseline_accuracy=0.5) as probe:
        probe.evaluated(None, test_loss=0.7)
        for step in range(5):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
            if step == 2 or step == 4:
                with torch.no_grad():
                    out = model(x)
                probe.evaluated(step, test_loss=F.cross_entropy(out, y).item(),
                                test_accuracy=(out.argmax(1) == y).float().mean().item())
    path = probe.path
    assert path.parent == tmp_path / "runs" / "mine"
    columns, metrics = read_csv(path / "metrics.csv")
    assert columns == METRIC_COLUMNS
    assert [int(r["step"]) for r in metrics] == [0, 2, 4]  # logged every 2 and the last
    assert [r["test_loss"] != "" for r in metrics] == [False, True, True]
    assert all(float(r["lr"]) == 0.1 for r in metrics)
    columns, layers = read_csv(path / "layers.csv")
    assert columns == LAYER_COLUMNS and len(layers) == 3 * 3
    assert [r["name"] for r in layers[:3]] == ["Linear[0]", "Linear[2]", "Linear[4]"]
    assert float(layers[0]["act_saturated"]) >= 0 and layers[0]["act_dead"] == ""  # tanh

    summary = json.loads((path / "summary.json").read_text())
    assert CONTRACT <= set(summary)
    check_summary(summary, path / "summary.json")
    assert summary["status"] == "completed" and summary["steps_done"] == 5
    assert summary["first_nonfinite"] is None and summary["initial_metrics"]["test_loss"] == 0.7
    assert set(summary["final_metrics"]) == {"train_loss", "test_loss", "test_accuracy"}
    assert summary["grad_ratio_init"] == float(layers[0]["grad_norm"]) / float(layers[2]["grad_norm"])
    for layer in summary["layers"]:
        assert LAYER_STATS <= set(layer["init"]) and LAYER_STATS <= set(layer["final"])
    for verdict in summary["verdicts"]:
        assert set(verdict) == {"kind", "severity", "when", "layers", "message", "remedies",
                                "fixes"}
        assert verdict["fixes"] == [] and not any("--set" in r for r in verdict["remedies"])
    record = read_record(path)
    assert record.status == "completed" and len(record.layers) == 9

    # the CLI reads it as it reads any run: report (with its figures) and runs
    shown = CliRunner().invoke(app, ["report", str(path)], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    assert "mine" in shown.stdout and "Linear[2]" in shown.stdout and "verdict" in shown.stdout
    assert {p.name for p in (path / "plots").iterdir()} >= {"loss.png", "grad_flow.png",
                                                           "grad_heatmap.png", "activations.png"}
    listed = CliRunner().invoke(app, ["runs", str(tmp_path / "runs")], env={"COLUMNS": "120"})
    assert listed.exit_code == 0 and "mine" in listed.stdout and "completed" in listed.stdout
    assert "gradlab run" in probe.report()  # the same report, as text

    # two records side by side: a compare record, as `gradlab compare` writes one
    from gradlab.record.comparison import read_comparison

    compared = gradlab.compare_runs([probe, path], out=tmp_path / "runs", plots=False)
    rows = read_comparison(compared)
    assert [r["variant"] for r in rows] == ["mine", "mine-2"]  # one record twice: two names
    assert rows[0]["status"] == "completed" and rows[0]["grad_ratio_init"] == pytest.approx(
        summary["grad_ratio_init"])
    assert (compared / "report.md").exists()


def test_a_logged_step_fetches_once_whatever_the_depth(tmp_path: Path) -> None:
    def syncs(depth: int) -> list[int]:
        layers: list[nn.Module] = []
        for _ in range(depth):
            layers += [nn.Linear(8, 8), nn.ReLU()]
        model = nn.Sequential(*layers, nn.Linear(8, 1))
        probe = gradlab.watch(model, every=2, out=tmp_path / "runs", name=f"d{depth}")
        x, y = torch.randn(16, 8), torch.randn(16, 1)
        counts = []
        for step in range(2):  # step 0 logged, step 1 not
            loss = F.mse_loss(model(x), y)
            model.zero_grad()
            loss.backward()
            with counting_syncs() as backward:
                probe.after_backward(step, loss=loss)
            with counting_syncs() as after:
                probe.after_step(step)
            counts += [sum(backward.values()), sum(after.values())]
        probe.close()
        return counts

    shallow, deep = syncs(2), syncs(10)
    assert shallow == deep
    logged_backward, logged_step, backward, step = deep
    assert backward == 1  # the loss and gradient norm: the NaN check
    # and on a logged step that takes quantiles (step 0), on the CPU, the NumPy view through
    # which their samples are sorted (`probe.nanquantiles`: no device waits for it)
    assert logged_backward == 2
    assert 1 <= logged_step <= 2 and step == 0  # the probe's one fetch


# ---------------------------------------------------------------- bad input


def small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))


def backward(model: nn.Module) -> torch.Tensor:
    loss = model(torch.randn(5, 3)).pow(2).mean()
    model.zero_grad()
    loss.backward()
    return loss


class NoParams(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2


@pytest.mark.parametrize("model, words", [
    (NoParams(), "NoParams has no parameters"),
    (nn.Linear(3, 2, device="meta"), "meta device"),
    ("not a model", "expected a torch.nn.Module"),
    (nn.Sequential(nn.ReLU(), nn.Linear(3, 2).requires_grad_(False)), "no trainable parameters"),
])
def test_a_model_that_cannot_be_watched_is_named_and_nothing_is_written(
        tmp_path: Path, model: Any, words: str) -> None:
    with pytest.raises(gradlab.WatchError, match=words):
        gradlab.watch(model, out=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_bad_options_and_unknown_layers_are_named(tmp_path: Path) -> None:
    out = tmp_path / "runs"
    for options, words in ((dict(every=0), "every=0"), (dict(name="a/b"), "name="),
                           (dict(on_nonfinite="ignore"), "on_nonfinite"),
                           (dict(layers=["nope"]), "'nope' is not a module"),
                           (dict(layers=[nn.Linear(2, 2)]), "is not a module of"),
                           (dict(layers=["1"]), "has no weight")):
        with pytest.raises(gradlab.WatchError, match=words):
            gradlab.watch(small(), out=out, **options)
    assert not out.exists()
    afile = tmp_path / "a-file"
    afile.write_text("not a directory")
    with pytest.raises(gradlab.WatchError, match="cannot create records there: Not a directory"):
        gradlab.watch(small(), out=afile)
    probe = gradlab.watch(small(), out=out, layers=["2"])  # an explicit list
    assert probe.layers == ["Linear[2]"]
    probe.close()


def status(probe: gradlab.Watch) -> tuple[str, str | None]:
    summary = json.loads((probe.path / "summary.json").read_text())
    return summary["status"], summary["error"]


@pytest.mark.parametrize("calls, words", [
    ([("after_step", 0)], r"after_step\(0\) out of order: expected after_backward\(0\)"),
    ([("after_backward", 1)], r"after_backward\(1\) out of order: the next step is 0"),
    ([("after_backward", 0), ("after_backward", 0)], "called twice in a row"),
    ([("after_backward", 0), ("after_step", 1)], r"expected after_step\(0\)"),
])
def test_steps_out_of_order_are_named_and_the_record_says_failed(
        tmp_path: Path, calls: list[tuple[str, int]], words: str) -> None:
    model = small()
    probe = gradlab.watch(model, out=tmp_path / "runs")
    with pytest.raises(gradlab.WatchError, match=words):
        for method, step in calls:
            backward(model)
            getattr(probe, method)(step)
    assert status(probe) == ("failed", "WatchError: " + str(probe._error))
    with pytest.raises(gradlab.WatchError, match="this watch stopped"):
        probe.after_backward(0)
    probe.close()
    probe.close()  # closing twice is harmless


def test_a_step_with_no_gradient_and_a_model_that_changed_are_named(tmp_path: Path) -> None:
    model = small()
    probe = gradlab.watch(model, out=tmp_path / "runs")
    model(torch.randn(2, 3))
    with pytest.raises(gradlab.WatchError, match="no parameter has a gradient"):
        probe.after_backward(0)  # no loss.backward()
    assert status(probe)[0] == "failed"

    model = small()
    probe = gradlab.watch(model, out=tmp_path / "runs")
    model[2] = nn.Linear(4, 1)  # replaced after watch()
    backward(model)
    with pytest.raises(gradlab.WatchError, match="parameters changed after watch"):
        probe.after_backward(0)
    assert status(probe)[0] == "failed"


def test_an_exception_in_the_loop_leaves_a_failed_or_interrupted_record(tmp_path: Path) -> None:
    model = small()
    with pytest.raises(ZeroDivisionError):
        with gradlab.watch(model, out=tmp_path / "runs", name="boom") as probe:
            loss = backward(model)
            probe.after_backward(0, loss)
            probe.after_step(0)
            _ = 1 / 0
    assert status(probe) == ("failed", "ZeroDivisionError: division by zero")
    assert "_ = 1 / 0" in (probe.path / "traceback.txt").read_text()
    [failed] = json.loads((probe.path / "summary.json").read_text())["verdicts"]
    assert failed["remedies"] == ["see traceback.txt in the run directory"]
    assert read_record(probe.path).status == "failed"

    with pytest.raises(KeyboardInterrupt):
        with gradlab.watch(model, out=tmp_path / "runs", name="stop") as probe:
            raise KeyboardInterrupt
    assert status(probe) == ("interrupted", None)
    assert all(not m._forward_hooks for m in model.modules())


# ---------------------------------------------------------------- mixed precision


def test_a_loss_scaler_is_divided_out_and_its_overflows_are_not_a_divergence(tmp_path: Path) -> None:
    def run(scaler: torch.amp.GradScaler | None, steps: int = 1, autocast: bool = False,
            gain: float = 1.0) -> gradlab.Watch:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 1))
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        x, y = torch.randn(32, 8), torch.randn(32, 1)
        with gradlab.watch(model, every=1, out=tmp_path / "runs", optimizer=opt,
                           scaler=scaler) as probe:
            for step in range(steps):
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    loss = gain * F.mse_loss(model(x).float(), y)
                opt.zero_grad()
                (scaler.scale(loss) if scaler else loss).backward()
                probe.after_backward(step, loss=loss)
                if scaler:
                    scaler.step(opt)
                    scaler.update()
                else:
                    opt.step()
                probe.after_step(step)
        return probe

    plain, scaled = run(None), run(torch.amp.GradScaler("cpu", init_scale=2.0 ** 10))
    a, b = (read_csv(p.path / "layers.csv")[1] for p in (plain, scaled))
    for row_a, row_b in zip(a, b):
        for stat in ("grad_norm", "grad_absmax", "delta_norm", "update_ratio"):
            assert float(row_b[stat]) == pytest.approx(float(row_a[stat]), rel=1e-6), stat
    (m_a,), (m_b,) = (read_csv(p.path / "metrics.csv")[1] for p in (plain, scaled))
    assert float(m_b["grad_norm"]) == pytest.approx(float(m_a["grad_norm"]), rel=1e-6)

    # a scale so large that the scaled gradients overflow: the scaler skips those steps
    overflowing = run(torch.amp.GradScaler("cpu", init_scale=1e38, backoff_factor=1e-6),
                      steps=4, gain=1e6)
    s = overflowing.summary or {}
    assert s["status"] == "completed" and s["first_nonfinite"] is None
    assert 1 <= s["mixed_precision"]["overflowed_steps"] < 4
    bf16 = run(None, steps=2, autocast=True)  # bfloat16 activations, float32 gradients
    assert (bf16.summary or {})["status"] == "completed"
    assert all(math.isfinite(layer["init"]["grad_norm"]) for layer in (bf16.summary or {})["layers"])


class AddsInPlace(nn.Module):
    """fc1 → GELU, then `h += 1` on the GELU's output (from the call `change_from` on), then
    fc2 → Tanh → head: one activation changed in place after its hook, one never."""

    def __init__(self, change_from: int = 0):
        super().__init__()
        self.fc1, self.gelu = nn.Linear(4, 8), nn.GELU()
        self.fc2, self.tanh = nn.Linear(8, 8), nn.Tanh()
        self.head = nn.Linear(8, 2)
        self.calls, self.change_from = 0, change_from

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.gelu(self.fc1(x))
        if self.calls >= self.change_from:
            h += 1.0
        self.calls += 1
        return self.head(self.tanh(self.fc2(h)))


@torch.no_grad()
def hand_activations(model: AddsInPlace, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    g = F.gelu(F.linear(x, model.fc1.weight, model.fc1.bias))
    shift = 1.0 if model.calls >= model.change_from else 0.0
    t = torch.tanh(F.linear(g + shift, model.fc2.weight, model.fc2.bias))
    return g.double(), t.double()  # the probe's moments are float64


@pytest.mark.parametrize("change_from", [0, 1])
def test_activations_stay_exact_on_later_steps_when_an_output_changes_in_place(
        tmp_path: Path, change_from: int) -> None:
    """The probe takes the first logged step's activation statistics at once, then batches the
    outputs that no in-place op changed: every logged step's numbers are the activation
    modules' own outputs. An output first changed on a later step is not measured there (never
    a wrong value) and is right from the next step on."""
    torch.manual_seed(3)
    model = AddsInPlace(change_from)
    x, y = torch.randn(6, 4), torch.tensor([0, 1, 1, 0, 1, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    hand = []
    with gradlab.watch(model, every=1, steps=4, out=tmp_path / "runs", optimizer=opt) as probe:
        for step in range(4):
            hand.append(hand_activations(model, x))
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
    rows = read_csv(probe.path / "layers.csv")[1]
    for step, (g, t) in enumerate(hand):
        fc1, fc2 = (next(r for r in rows if r["step"] == str(step) and r["name"] == name)
                    for name in ("fc1", "fc2"))
        assert float(fc2["act_mean"]) == pytest.approx(float(t.mean()), rel=1e-9)
        assert float(fc2["act_std"]) == pytest.approx(float(t.std()), rel=1e-9)
        assert float(fc2["act_saturated"]) == pytest.approx(float((t.abs() > 0.99).double().mean()))
        if change_from == 1 and step == 1:  # kept by reference, then changed: not measured
            assert fc1["act_mean"] == fc1["act_std"] == fc1["act_q50"] == "", fc1
            continue
        assert float(fc1["act_mean"]) == pytest.approx(float(g.mean()), rel=1e-9), step
        assert float(fc1["act_std"]) == pytest.approx(float(g.std()), rel=1e-9), step
        if step in (0, 3):  # quantiles at the first and the last step
            for name, q in (("act_q05", 0.05), ("act_q50", 0.5), ("act_q95", 0.95)):
                assert float(fc1[name]) == pytest.approx(float(torch.quantile(g.double(), q)),
                                                         rel=1e-9), (step, name)
                assert float(fc2[name]) == pytest.approx(float(torch.quantile(t.double(), q)),
                                                         rel=1e-9), (step, name)


def test_ok_is_said_only_where_learning_was_judged(tmp_path: Path) -> None:
    """A watched model with healthy gradients but no baseline gets `gradients_ok`, never `ok`
    (which says the net learned); given a baseline and an evaluation that beats it: `ok`."""
    torch.manual_seed(0)
    x = torch.randn(256, 3)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]])

    def train(name: str, **given: Any) -> dict[str, Any]:
        model = small()
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        with gradlab.watch(model, every=10, out=tmp_path, name=name, optimizer=opt,
                           **given) as probe:
            for step in range(100):
                loss = F.mse_loss(model(x), y)
                opt.zero_grad()
                loss.backward()
                probe.after_backward(step, loss=loss)
                opt.step()
                probe.after_step(step)
            with torch.no_grad():
                probe.evaluated(step, test_loss=float(F.mse_loss(model(x), y)))
        return json.loads((probe.path / "summary.json").read_text())

    unjudged = train("unjudged")
    assert [v["kind"] for v in unjudged["verdicts"]] == ["gradients_ok"]
    assert "whether the net learned is not judged" in unjudged["verdicts"][0]["message"]
    judged = train("judged", baseline_loss=float(y.var()))
    assert "gradients_ok" not in [v["kind"] for v in judged["verdicts"]]
    assert judged["final_metrics"]["test_loss"] < 0.1 * judged["baseline_loss"]  # the premise
    assert [v["kind"] for v in judged["verdicts"]] == ["ok"]


def test_a_report_while_the_loop_runs_shows_what_was_logged(tmp_path: Path) -> None:
    """Before close, with no `steps=`: the steps logged so far, of an unknown total ('?')."""
    model = small()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    probe = gradlab.watch(model, every=2, out=tmp_path, optimizer=opt)
    for step in range(3):  # steps 0 and 2 are logged
        loss = backward(model)
        probe.after_backward(step, loss=loss)
        opt.step()
        probe.after_step(step)
    text = probe.report(width=80)
    probe.close()
    assert "running  3/? steps" in text and "None" not in text


class WithASpareLayer(nn.Module):
    """`spare` is registered between the layers but never called: it gets no gradient."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.spare = nn.Linear(16, 16)
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.fc1(x)))


def test_a_layer_that_takes_no_part_has_no_gradient_not_a_gradient_of_zero(
        tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, x = WithASpareLayer(), torch.randn(32, 8)
    y = torch.randint(0, 3, (32,))
    reference = copy.deepcopy(model).double()
    F.cross_entropy(reference(x.double()), y).backward()
    assert reference.spare.weight.grad is None  # the premise: no gradient at all
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradlab.watch(model, every=1, steps=2, out=tmp_path, name="spare") as probe:
        for step in range(2):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
    rows = {r["name"]: r for r in read_csv(probe.path / "layers.csv")[1] if r["step"] == "0"}
    for key in ("grad_norm", "grad_rms", "grad_absmax"):
        assert rows["spare"][key] == "", key  # not measured: an empty cell, never 0
    assert float(rows["spare"]["update_ratio"]) == 0  # measured: the weight did not move
    summary = json.loads((probe.path / "summary.json").read_text())
    # the ratio is the first layer's over the head's, as a float64 recomputation has it
    expected = norm(reference.fc1.weight.grad) / norm(reference.head.weight.grad)
    assert summary["grad_ratio_init"] == pytest.approx(expected, rel=1e-5)
    [verdict] = summary["verdicts"]
    assert verdict["kind"] == "gradients_ok" and "exploding" not in verdict["message"]
    assert "gradients reach every other layer" in verdict["message"]
    assert "spare got no gradient (took no part in the loss)" in verdict["message"]


class RawLinear(nn.Module):
    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_out, n_in) / math.sqrt(n_in))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()


def test_weights_discovery_passes_over_are_named_and_no_verdict_claims_every_layer(
        tmp_path: Path) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), RawLinear(4, 4), RawLinear(4, 1))
    with pytest.warns(UserWarning, match=r"2 weight\(s\) in modules of no layer kind gradlab "
                      r"knows are not watched \(RawLinear ×2\); pass layers=") as caught:
        probe = gradlab.watch(model, every=1, steps=1, out=tmp_path, name="raw")
    assert caught[0].filename == __file__  # it points at the caller's line
    backward(model)
    probe.after_backward(0)
    probe.after_step(0)
    probe.close()
    [verdict] = json.loads((probe.path / "summary.json").read_text())["verdicts"]
    assert "every layer" not in verdict["message"]
    assert "a single probed layer with a gradient: no first/last ratio" in verdict["message"]
    # parameters that are no layer's weight, in a kind gradlab knows or beside it: no warning
    others = nn.Sequential(nn.MultiheadAttention(4, 2, add_bias_kv=True), nn.Linear(4, 1))
    others.register_parameter("pos", nn.Parameter(torch.zeros(1, 3, 4)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradlab.watch(others, out=tmp_path, name="others").close()
    named = [model[0], model[2], model[3]]  # named layers: nothing left out is a surprise
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradlab.watch(model, layers=named, out=tmp_path, name="named").close()


def test_compare_runs_keeps_two_records_of_one_name_apart(tmp_path: Path) -> None:
    """Two watches of one model class share its name: each row, link and curve must still be
    its own record's (they once both showed the second record)."""
    from gradlab.record.comparison import read_comparison, variant_records
    from gradlab.render.compare_figures import variant_labels

    paths = []
    for steps in (12, 4):
        model = small()
        with gradlab.watch(model, every=2, steps=steps, out=tmp_path) as probe:
            for step in range(steps):
                loss = backward(model)
                probe.after_backward(step, loss=loss)
                probe.after_step(step)
        paths.append(probe.path)
    record = gradlab.compare_runs(paths, out=tmp_path / "cmp", plots=False)
    rows = read_comparison(record)
    assert [r["variant"] for r in rows] == ["Sequential", "Sequential-2"]
    assert [r["steps"] for r in rows] == [12, 4]
    for row, path in zip(rows, paths):
        assert (record / "variants" / row["variant"]).resolve() == path.resolve()
    records = variant_records(record)
    assert [len({m["step"] for m in r.metrics}) for r in records] == [7, 3]  # 0, 2, …, last
    assert variant_labels(records) == ["Sequential", "Sequential-2"]
    # one record given twice: two rows, two labels, the same as the table's
    twice = gradlab.compare_runs([paths[0], paths[0]], out=tmp_path / "twice", plots=False)
    assert variant_labels(variant_records(twice)) == [r["variant"] for r in read_comparison(
        twice)] == ["Sequential", "Sequential-2"]


def test_a_watched_loops_clipping_is_not_measured_so_its_share_is_null(tmp_path: Path) -> None:
    """The loop clips every step; watch cannot see that, so clip_fraction must not say 0."""
    model = small()
    with gradlab.watch(model, every=1, steps=3, out=tmp_path, name="clipped") as probe:
        for step in range(3):
            loss = backward(model)
            nn.utils.clip_grad_norm_(model.parameters(), 1e-3)
            probe.after_backward(step, loss=loss)
            probe.after_step(step)
    summary = json.loads((probe.path / "summary.json").read_text())
    assert summary["clip_fraction"] is None and summary["clip"] is None
    assert "clipping" not in [v["kind"] for v in summary["verdicts"]]


class LateLayer(nn.Module):
    """`extra` joins the forward pass at step 2: no gradient at the first logged step."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.head, self.extra = nn.Linear(3, 4), nn.Linear(4, 1), nn.Linear(1, 1)
        self.late = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.head(torch.tanh(self.fc1(x)))
        return self.extra(out) * 1e-4 if self.late else out


def test_the_ratio_ends_at_the_same_layers_at_every_step(tmp_path: Path) -> None:
    """A layer that gets a gradient at some steps only is no end of the first/last ratio:
    init and end compare fc1 with the head, never fc1 with `extra`."""
    torch.manual_seed(0)
    model, x = LateLayer(), torch.randn(16, 3)
    with gradlab.watch(model, every=1, steps=4, out=tmp_path, name="late") as probe:
        for step in range(4):
            model.late = step >= 2
            loss = model(x).pow(2).mean()
            model.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            probe.after_step(step)
    rows = read_csv(probe.path / "layers.csv")[1]
    at = {(int(r["step"]), r["name"]): r["grad_norm"] for r in rows}
    assert at[(0, "extra")] == "" and at[(3, "extra")] != ""  # the premise
    summary = json.loads((probe.path / "summary.json").read_text())
    for key, step in (("grad_ratio_init", 0), ("grad_ratio_final", 3)):
        expected = float(at[(step, "fc1")]) / float(at[(step, "head")])
        assert summary[key] == pytest.approx(expected, rel=1e-12), key
    ratios = summary["over_run"]["grad_ratio"]
    assert ratios["max"] == pytest.approx(max(float(at[(s, "fc1")]) / float(at[(s, "head")])
                                              for s in range(4)), rel=1e-12)


def test_the_loops_own_clipping_is_recorded_as_told_and_counted_where_seen(
        tmp_path: Path) -> None:
    def run(name: str, clip: dict[str, Any]) -> tuple[gradlab.Watch, dict[str, Any]]:
        model = small()
        with gradlab.watch(model, every=1, steps=4, out=tmp_path, name=name, clip=clip) as probe:
            for step in range(4):
                loss = backward(model)
                probe.after_backward(step, loss=loss)  # before the loop clips
                nn.utils.clip_grad_norm_(model.parameters(), clip.get("max_norm", 1.0))
                probe.after_step(step)
        return probe, json.loads((probe.path / "summary.json").read_text())

    probe, before = run("before", {"max_norm": 0.05})
    norms = [float(r["grad_norm"]) for r in read_csv(probe.path / "metrics.csv")[1]]
    assert before["clip"]["steps_clipped"] == sum(n > 0.05 for n in norms) == 4
    assert before["clip_fraction"] == 1.0
    assert "clipping" in [v["kind"] for v in before["verdicts"]]
    probe, after = run("after", {"max_norm": 0.05, "seen": "after"})
    assert after["clip_fraction"] is None and after["clip"] is None  # capped: not countable
    config = (probe.path / "config.yaml").read_text()
    assert "clip:" in config and "seen: after" in config
    report = CliRunner().invoke(app, ["report", str(probe.path), "--no-plots"],
                                env={"COLUMNS": "80"})
    assert "gradients recorded after the loop's clipping to norm 0.05" in report.stdout
    for bad, words in (({"max_norm": -1}, "clip.max_norm=-1: expected a positive number"),
                       ({"max_norm": 1, "max_value": 1}, "expected one of max_norm, max_value"),
                       ({"max_norm": 1, "seen": "during"}, "clip.seen='during'")):
        with pytest.raises(gradlab.WatchError, match=re.escape(words)):
            gradlab.watch(small(), out=tmp_path, clip=bad)


def test_a_model_mixing_activations_draws_each_layers_own_unit_fraction(tmp_path: Path) -> None:
    """ReLU layers and a tanh layer: the tanh layer's saturation is drawn beside the ReLU
    layers' dead units (it was in the verdict and nowhere in the figure)."""
    from gradlab.record.reader import read_record
    from gradlab.render.activation_figures import activations_figure

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(),
                          nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    with gradlab.watch(model, every=1, steps=2, out=tmp_path, name="mixed") as probe:
        for step in range(2):
            loss = backward(model)
            probe.after_backward(step, loss=loss)
            probe.after_step(step)
    figure = activations_figure(read_record(probe.path))
    third = figure.axes[2]
    labels = [line.get_label() for line in third.get_lines()]
    assert "saturated, end (step 1)" in labels and "dead, end (step 1)" in labels
    [saturated] = [line for line in third.get_lines() if line.get_label() == "saturated, end (step 1)"]
    ys = saturated.get_ydata()
    assert np.isnan(ys[:2]).all() and np.isfinite(ys[2])  # the tanh layer only
