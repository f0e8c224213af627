"""Mixed precision (`train.precision: bf16|fp16`): the headroom the probe reports against an
independent computation (a bare autocast loop and a float64 forward on the same model and
batch), the precision verdict on bf16 and fp16 runs (and never on fp32 runs), the canonical
pair (fp16 underflow without a loss scale, the grad scaler as its remedy), the API's option and
bad input.
"""

from __future__ import annotations

import copy
import io
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import CONFIGS, TINY, tiny_config
from rich.console import Console
from torch.nn import functional as F

import gradlab.train.loop as loop
from gradlab.analyse.expect import check, check_versus
from gradlab.analyse.verdicts import diagnose
from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.config import ConfigError, config_from_dict, load_config, resolved
from gradlab.record.reader import Record, read_record
from gradlab.render.report import header as report_header
from gradlab.render.report import precision_line
from gradlab.runner import run_config
from gradlab.train.loop import reference_grads
from gradlab.train.probe import PRECISION_STATS, Probe

FP16_TINY, FP16_SMALLEST = 2.0 ** -14, 2.0 ** -24  # smallest normal, smallest subnormal
# 8 sigmoid layers: the backward signal falls ~4× per layer, below fp16's range at the bottom
DEEP = {"depth": 8, "width": 16, "activation": "sigmoid", "init": "default"}


def deep_sigmoid(seed: int = 0) -> tuple[torch.nn.Module, Any, torch.Tensor, torch.Tensor]:
    cfg = config_from_dict({**TINY, "model": DEEP, "data": {"kind": "digits"}})
    torch.manual_seed(seed)
    data = load_data(cfg.data, cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    return built.model, built.layers, data.x_train[:64], data.y_train[:64]


def probed_rows(model: torch.nn.Module, layers: Any, x: torch.Tensor, y: torch.Tensor,
                precision: str) -> list[dict[str, Any]]:
    """One probed step of `model` under autocast, as the training loop takes it."""
    probe = Probe(layers, every=1, last_step=0, precision=precision)
    probe.before_forward(0)
    with loop.autocast(precision, x.device):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    probe.after_backward(0)
    probe.underflow(reference_grads(model, layers, (x, y), F.cross_entropy))
    rows = probe.after_step(0)
    probe.close()
    assert rows is not None
    return rows


def test_headroom_matches_a_bare_autocast_loop_and_a_float64_forward() -> None:
    model, layers, x, y = deep_sigmoid()
    bare = copy.deepcopy(model)
    rows = probed_rows(model, layers, x, y, "fp16")

    # the bare loop: the same model and batch, fp16 autocast, then float32; no gradlab code
    with torch.autocast("cpu", dtype=torch.float16):
        F.cross_entropy(bare(x), y).backward()
    low = [m.weight.grad.clone() for m in bare.modules() if isinstance(m, torch.nn.Linear)]
    bare.zero_grad()
    F.cross_entropy(bare(x), y).backward()
    full = [m.weight.grad.clone() for m in bare.modules() if isinstance(m, torch.nn.Linear)]
    # the float64 forward: each layer's largest |z|, which fp16 holds to ~3 digits
    zmax, h = [], x.double()
    linears = [m for m in bare.modules() if isinstance(m, torch.nn.Linear)]
    for i, linear in enumerate(linears):
        z = F.linear(h, linear.weight.double(), linear.bias.double())
        zmax.append(z.abs().max().item())
        h = torch.sigmoid(z) if i < len(linears) - 1 else z

    assert len(rows) == len(low) == 9
    for row, g16, g32, peak in zip(rows, low, full, zmax):
        assert row["z_absmax"] == pytest.approx(peak, rel=2e-3)
        assert row["overflow"] == 0
        assert row["grad_underflow"] == int(((g16 == 0) & (g32 != 0)).sum())
        assert row["grad_tiny"] == int(((g16 != 0) & (g16.abs() < FP16_TINY)).sum())
        assert row["grad_absmax"] == pytest.approx(g16.abs().max().item(), rel=1e-6)
    # the bottom layers lose their whole gradient in fp16; float32 keeps every entry but the
    # inputs' constant pixels
    assert rows[1]["grad_underflow"] == 16 * 16  # fc2: every entry
    assert rows[1]["grad_norm"] == 0 and full[1].abs().min() > 0
    assert all(0 < g.abs().max() < FP16_SMALLEST for g in full[1:2])
    assert rows[-1]["grad_underflow"] == 0  # the head's gradient is well inside fp16's range


def test_bf16_loses_nothing_there_and_reports_its_range() -> None:
    model, layers, x, y = deep_sigmoid()
    rows = probed_rows(model, layers, x, y, "bf16")
    assert all(r["z_absmax"] is not None and r["z_absmax"] > 0 for r in rows)
    assert sum(r["grad_underflow"] for r in rows[:3]) == 0  # 1e-38 is far below these
    assert all(r["grad_tiny"] == 0 for r in rows)


def test_an_fp32_probe_measures_no_headroom_and_the_loop_takes_no_reference(
        run_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any) -> Any:
        raise AssertionError("an fp32 run takes no float32 reference backward")

    monkeypatch.setattr(loop, "reference_grads", refuse)
    outcome = run_tiny()
    s = outcome.summary
    assert s["status"] == "completed" and s["precision"] is None
    assert not any(v["kind"] == "precision" for v in s["verdicts"])
    rows = read_record(outcome.path).layers
    assert rows and all(r[name] is None for r in rows for name in PRECISION_STATS)
    assert all(r["grad_norm"] is not None for r in rows)
    # and the probe's hooks compute nothing for them
    model, layers, x, y = deep_sigmoid()
    probe = Probe(layers, every=1, last_step=0)
    probe.before_forward(0)
    F.cross_entropy(model(x), y).backward()
    assert probe._z == {} and not probe._low
    probe.close()


def header_text(summary: dict) -> str:
    """The report header of a record with this summary, as an 80-column terminal shows it."""
    console = Console(width=80, record=True, file=io.StringIO())
    console.print(report_header(Record(Path("runs/x/1"), summary, {}, [], [])))
    return console.export_text().replace("│", " ")  # the box's sides, between wrapped lines


@pytest.fixture
def fp16_pair(tmp_path):
    """The canonical pair, seed 0, as `gradlab compare` runs it."""
    problem = load_config(CONFIGS / "precision_fp16.yaml")
    remedy = load_config(CONFIGS / "precision_fp16_scaled.yaml")
    return (problem, run_config(problem, tmp_path / "runs").summary,
            remedy, run_config(remedy, tmp_path / "runs").summary)


def test_fp16_underflow_without_a_loss_scale_and_the_grad_scaler_as_its_remedy(
        fp16_pair) -> None:
    problem, lost, remedy, scaled = fp16_pair
    p = lost["precision"]
    assert p["dtype"] == "fp16" and p["loss_scale"] == "none" and p["max"] == 65504
    assert p["tiny"] == FP16_TINY and p["smallest"] == FP16_SMALLEST
    assert p["underflow_init"] > 0.2 and {"fc1", "fc2"} <= set(p["zero_grad_layers"])
    assert p["underflow_max"]["fraction"] == 1.0
    assert 3 < p["headroom"] < 5  # sigmoid nets' |z| stays in the tens: overflow is far
    assert p["scale_init"] is None and p["skipped_steps"] == 0
    verdict = next(v for v in lost["verdicts"] if v["kind"] == "precision")
    assert verdict["severity"] == "warning" and "fc1" in verdict["layers"]
    assert "were 0 in fp16" in verdict["message"]
    assert [f["set"] for f in verdict["fixes"]][:2] == [["train.loss_scale=dynamic"],
                                                         ["train.precision=bf16"]]
    assert lost["verdicts"][0]["kind"] == "precision"  # the cause comes first

    q = scaled["precision"]
    assert q["loss_scale"] == "dynamic" and q["scale_init"] == 2.0 ** 16
    assert q["scale"][0] == [0, 2.0 ** 16] and q["scale_final"] == q["scale"][-1][1]
    assert q["skipped_steps"] == len(q["scale"]) - 1  # each overflow halved the scale once
    assert q["underflow_init"] < 0.01 and q["zero_grad_layers"] == []
    verdict = next(v for v in scaled["verdicts"] if v["kind"] == "precision")
    assert verdict["severity"] == "info" and "headroom" in verdict["message"]

    # the report's header says it: the dtype, the scale and what it did, the loss to underflow
    lines = {k: " ".join(header_text(summary).split()) for k, summary in
             (("lost", lost), ("scaled", scaled))}
    assert (f"precision fp16, loss scale none, {100 * p['underflow_init']:.3g}% of gradient "
            f"entries underflowed at init, headroom {p['headroom']:.3g} orders of magnitude"
            in lines["lost"])
    skipped = q["skipped_steps"]
    assert (f"precision fp16, loss scale dynamic {q['scale_init']:.3g} → {q['scale_final']:.3g}, "
            f"{skipped} step{'s' if skipped != 1 else ''} skipped," in lines["scaled"])
    assert "precision fp" not in " ".join(header_text({**lost, "precision": None}).split())

    assert all(e.ok for e in check(problem.expect, lost))
    assert all(e.ok for e in check(remedy.expect, scaled))
    paired = check_versus(remedy.expect, {0: scaled}, {"precision_fp16": {0: lost}})
    assert len(paired) == 2 and all(e.ok for e in paired)


@pytest.mark.parametrize("scale, skipped, shown", [
    ("dynamic", 0, "0 steps skipped"), ("dynamic", 1, "1 step skipped"),
    ("dynamic", 3, "3 steps skipped"), ("none", 0, None)])
def test_a_dynamic_scale_always_says_how_often_it_backed_off(scale, skipped, shown) -> None:
    """A dynamic scale's count is news even at 0 (whether the scaler had to back off depends on
    the CPU's rounding: seed 0 of precision_fp16_scaled skips 1 step on one machine, 0 on
    another); a static scale never skips, so nothing is said."""
    p = {"dtype": "fp16", "loss_scale": scale, "skipped_steps": skipped,
         "scale_init": 2.0 ** 16 if scale == "dynamic" else None,
         "scale_final": 2.0 ** 16 if scale == "dynamic" else None}
    line = ", ".join(precision_line(p))
    if shown is None:
        assert "skipped" not in line
    else:
        assert f", {shown}" in line

def test_a_bf16_run_reports_headroom_and_the_precision_verdict(run_tiny) -> None:
    outcome = run_tiny(train={"precision": "bf16"})
    s = outcome.summary
    p = s["precision"]
    assert s["status"] == "completed" and p["dtype"] == "bf16" and p["loss_scale"] is None
    assert p["max"] == pytest.approx(3.3895e38, rel=1e-4) and p["headroom"] > 30
    assert p["underflow_init"] is not None and p["tiny_init"] == 0
    verdict = next(v for v in s["verdicts"] if v["kind"] == "precision")
    assert verdict["severity"] == "info" and "bf16 headroom" in verdict["message"]
    rows = read_record(outcome.path).layers
    assert all(r["z_absmax"] is not None and r["overflow"] == 0 for r in rows)


def test_an_fp16_run_that_overflows_blames_the_precision(run_tiny) -> None:
    # weights of std 30 on 8 standardised inputs: |z| of the first layer in the thousands, the
    # identity layers then multiply it past 65504
    outcome = run_tiny(model={"activation": "identity", "init": {"scheme": "normal", "std": 30}},
                       train={"precision": "fp16", "loss_scale": "none"})
    s = outcome.summary
    assert s["status"] == "diverged"
    verdict = next(v for v in s["verdicts"] if v["kind"] == "precision")
    assert verdict["severity"] == "warning" and "fp16 overflow" in verdict["message"]
    fixes = [f["set"] for f in verdict["fixes"]]
    assert ["train.precision=bf16"] in fixes and ["train.clip.max_norm=1.0"] in fixes
    assert math.isinf(s["precision"]["z_absmax"]["value"]) and s["precision"]["headroom"] < 0


def test_the_precision_verdict_never_fires_on_fp32() -> None:
    s = {"status": "completed", "layers": [], "final_metrics": {"test_loss": 0.1},
         "baseline_loss": 1.0, "precision": None}
    assert not any(v["kind"] == "precision" for v in diagnose(s, resolved(tiny_config())))
    fp32 = {**s, "precision": {"dtype": "fp32"}}
    assert not any(v["kind"] == "precision" for v in diagnose(fp32, resolved(tiny_config())))


def test_a_grad_scaler_skipping_many_steps_is_named() -> None:
    s = {"status": "completed", "layers": [], "final_metrics": {"test_loss": 0.9},
         "baseline_loss": 1.0, "steps_done": 100,
         "precision": {"dtype": "fp16", "max": 65504.0, "tiny": FP16_TINY,
                       "smallest": FP16_SMALLEST, "loss_scale": "dynamic",
                       "skipped_steps": 40, "scale_init": 65536.0, "scale_min": 2.0 ** -8,
                       "z_absmax": {"value": 900.0, "step": 10, "layer": "fc1"},
                       "headroom": 1.86, "overflow": 3000.0, "underflow_max": None,
                       "zero_grad_layers": []}}
    v = next(v for v in diagnose(s, resolved(tiny_config())) if v["kind"] == "precision")
    assert v["severity"] == "warning" and "skipped 40 of 100" in v["message"]
    assert ["train.loss_scale=dynamic"] not in [f["set"] for f in v["fixes"]]


def test_bad_precision_is_a_config_error_naming_the_key(write_yaml) -> None:
    path = write_yaml({"name": "bad", "data": {"kind": "digits"}, "train": {"precision": "fp8"}})
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "train.precision" in str(caught.value) and "fp8" in str(caught.value)
    assert "bf16" in str(caught.value)  # the allowed values are listed
    path = write_yaml({"name": "bad", "data": {"kind": "digits"},
                       "train": {"precision": "fp16", "loss_scale": "static"}})
    with pytest.raises(ConfigError, match="train.loss_scale"):
        load_config(path)


def test_the_api_reports_headroom_for_a_users_autocast_loop(tmp_path) -> None:
    import gradlab
    from gradlab.watch import WatchError

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 8), torch.randint(0, 3, (32,))
    with pytest.raises(WatchError, match="precision='fp8'"):
        gradlab.watch(model, out=tmp_path, precision="fp8")
    with gradlab.watch(model, every=2, out=tmp_path, name="amp", steps=6, optimizer=opt,
                       precision="bf16") as probe:
        for step in range(6):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
    s = probe.summary
    assert s is not None and s["precision"]["dtype"] == "bf16"
    assert s["precision"]["z_absmax"]["value"] > 0 and s["precision"]["headroom"] > 30
    assert any(v["kind"] == "precision" for v in s["verdicts"])
    rows = read_record(probe.path).layers
    assert all(r["z_absmax"] is not None and r["grad_underflow"] is None for r in rows)


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU an fp16 LSTM runs")
def test_an_fp16_lstm_is_refused_before_it_runs_on_the_cpu() -> None:
    """PyTorch's CPU LSTM has no float16 kernel: refused with the way out, where it failed
    at step 0 (a oneDNN error); a GRU in fp16 and an LSTM in bf16 run."""
    from gradlab.build.budget import preflight

    lstm = load_config(CONFIGS / "lstm_adding.yaml", ["train.precision=fp16"])
    with pytest.raises(ConfigError, match="fp16 LSTMs do not run on the CPU.*use bf16"):
        preflight(lstm, "lstm_adding.yaml")
    preflight(load_config(CONFIGS / "lstm_adding.yaml", ["train.precision=bf16"]), "x")
    preflight(load_config(CONFIGS / "gru_adding.yaml", ["train.precision=fp16"]), "x")
    preflight(lstm, "lstm_adding.yaml", training=False)  # predict measures it in float32
    from gradlab.predict import predict

    assert predict(load_config(CONFIGS / "lstm_adding.yaml", [
        "train.precision=fp16", "data.n_samples=256"]))["measured"]["notes"][0].startswith(
        "in float32")
    # and the refusal is right: the fused CPU LSTM cannot run in float16
    with pytest.raises(RuntimeError), torch.autocast("cpu", dtype=torch.float16):
        torch.nn.LSTM(4, 8)(torch.randn(5, 2, 4))[0].sum().backward()
