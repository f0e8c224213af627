"""Layer-wise pretraining: losses that fall, weights handed to fine-tuning, the two-phase record."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch
import yaml
from conftest import CONFIGS, read_csv, tiny, tiny_config
from torch.nn import functional as F
from typer.testing import CliRunner

from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.cli import app
from gradlab.config import config_from_dict
from gradlab.train.events import StepEnd

PRETRAIN = {"steps_per_layer": 40, "lr": 0.02, "batch_size": 16}
SIGMOID = {"activation": "sigmoid", "depth": 3}


def pretrained(**changes: Any) -> dict[str, Any]:
    """The tiny config's sections with a pretrain: section (sigmoid, 3 layers)."""
    return {"model": SIGMOID, "pretrain": PRETRAIN, **changes}


def hidden_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [lin.weight.detach().clone() for lin in model.linears]


@pytest.mark.parametrize("variant", [
    {},
    {"tied": False, "denoising": 0.3, "optimizer": "rmsprop"},
])
def test_every_layers_reconstruction_loss_falls_during_its_pretraining(run_tiny, variant):
    outcome = run_tiny(**pretrained(pretrain={**PRETRAIN, **variant}))
    layers = outcome.summary["pretrain"]["layers"]
    assert [layer["name"] for layer in layers] == ["fc1", "fc2", "fc3"]
    for layer in layers:
        assert layer["status"] == "completed" and layer["steps"] == 40
        assert layer["loss_end"] < 0.7 * layer["loss_start"], layer
        # and ends well below the loss of answering the mean code every time
        assert layer["loss_end"] < 0.7 * layer["input_variance"], layer
    # The logged minibatch losses of each layer fall too (first logged row vs last).
    _, rows = read_csv(outcome.path / "metrics.csv")
    for k in (1, 2, 3):
        losses = [float(r["loss"]) for r in rows if r["phase"] == f"pretrain_layer_{k}"]
        assert len(losses) == 21  # every 2nd of 40 steps, and the last
        assert losses[-1] < losses[0]


def test_the_first_layers_start_loss_is_the_tied_autoencoder_at_init():
    """An independent reference: x̂ = Wᵀ σ(Wx + b) with the decoder bias at zero."""
    from gradlab.train.pretrain import pretrain

    cfg = tiny_config(**pretrained())
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, _ = built.model, built.layers
    W, b = model.linears[0].weight.detach().clone(), model.linears[0].bias.detach().clone()
    x = data.x_train
    expected = F.mse_loss(torch.sigmoid(x @ W.T + b) @ W, x).item()
    summary = pretrain(cfg, model, data)
    first = summary["layers"][0]
    assert first["loss_start"] == pytest.approx(expected, rel=1e-5)
    assert first["input_variance"] == pytest.approx(x.var(dim=0, unbiased=False).mean().item())
    assert summary["seconds"] == pytest.approx(sum(r["seconds"] for r in summary["layers"]),
                                               abs=2e-3)


def test_finetuning_starts_from_the_pretrained_weights(run_tiny, monkeypatch):
    import gradlab.runner

    seen: dict[str, Any] = {}
    real_pretrain, real_train = gradlab.runner.pretrain, gradlab.runner.train

    def spy_pretrain(cfg, model, data, observers=None):
        seen["before"] = hidden_weights(model)
        seen["head_before"] = model.head.weight.detach().clone()
        summary = real_pretrain(cfg, model, data, observers)
        seen["after"] = hidden_weights(model)
        return summary

    def spy_train(cfg, built, data, steps, observers=None):
        seen["at_train"] = hidden_weights(built.model)
        seen["head_at_train"] = built.model.head.weight.detach().clone()
        return real_train(cfg, built, data, steps, observers)

    monkeypatch.setattr(gradlab.runner, "pretrain", spy_pretrain)
    monkeypatch.setattr(gradlab.runner, "train", spy_train)
    outcome = run_tiny(**pretrained())

    for before, after, at_train in zip(seen["before"], seen["after"], seen["at_train"]):
        assert not torch.equal(before, after)  # pretraining changed every hidden layer
        assert torch.equal(after, at_train)  # and fine-tuning received exactly those weights
    assert torch.equal(seen["head_before"], seen["head_at_train"])  # the head is not pretrained

    # The record agrees: the probe's weight norms at fine-tuning step 0 are the pretrained ones.
    _, rows = read_csv(outcome.path / "layers.csv")
    step0 = [r for r in rows if r["phase"] == "finetune" and r["step"] == "0"]
    assert [r["name"] for r in step0] == ["fc1", "fc2", "fc3", "head"]
    for row, W in zip(step0, seen["after"]):
        assert float(row["weight_norm"]) == pytest.approx(torch.linalg.vector_norm(W).item(),
                                                          rel=1e-6)


def test_the_record_has_both_phases_and_grad_ratio_init_is_from_finetuning(run_tiny):
    outcome = run_tiny(**pretrained())
    header, rows = read_csv(outcome.path / "metrics.csv")
    assert header[:2] == ["step", "phase"]
    phases = [r["phase"] for r in rows]
    # every pretraining row comes first, layer by layer, then only fine-tuning rows
    order = list(dict.fromkeys(phases))
    assert order == ["pretrain_layer_1", "pretrain_layer_2", "pretrain_layer_3", "finetune"]
    assert phases == sorted(phases, key=order.index)
    assert [r["step"] for r in rows if r["phase"] == "finetune"][:2] == ["0", "2"]

    # layers.csv holds the fine-tuning probe only, and grad_ratio_init is its first step
    _, layer_rows = read_csv(outcome.path / "layers.csv")
    assert {r["phase"] for r in layer_rows} == {"finetune"}
    first = {r["name"]: float(r["grad_norm"]) for r in layer_rows if r["step"] == "0"}
    summary = json.loads((outcome.path / "summary.json").read_text())
    assert summary["grad_ratio_init"] == pytest.approx(first["fc1"] / first["head"])
    assert summary["steps_done"] == 10  # the fine-tuning budget, pretraining not counted

    block = summary["pretrain"]
    assert block["status"] == "completed" and block["steps_per_layer"] == 40
    assert block["seconds"] > 0
    for k, layer in enumerate(block["layers"], start=1):
        assert layer["layer"] == k
        assert {"loss_start", "loss_end", "seconds", "input_variance"} <= set(layer)
        assert layer["seconds"] > 0


def test_a_run_without_pretraining_has_one_train_phase_and_no_pretrain_block(run_tiny):
    outcome = run_tiny()
    _, rows = read_csv(outcome.path / "metrics.csv")
    assert {r["phase"] for r in rows} == {"train"}
    assert "pretrain" not in outcome.summary


def test_a_diverging_pretraining_is_a_result_and_skips_finetuning(run_tiny):
    outcome = run_tiny(**pretrained(pretrain={**PRETRAIN, "optimizer": "sgd", "lr": 1e6}))
    s = outcome.summary
    assert s["status"] == "diverged" and s["pretrain"]["status"] == "diverged"
    assert s["first_nonfinite"]["phase"] == "pretrain_layer_1"
    assert s["first_nonfinite"]["layer"] == "fc1"
    assert [r["name"] for r in s["pretrain"]["layers"]] == ["fc1"]  # stopped at the bad layer
    assert s["steps_done"] == 0
    _, rows = read_csv(outcome.path / "metrics.csv")
    assert {r["phase"] for r in rows} == {"pretrain_layer_1"}
    assert json.loads((outcome.path / "summary.json").read_text())["status"] == "diverged"


class InterruptIn:
    """Raises Ctrl-C at a given pretraining step of layer 2."""

    def __init__(self) -> None:
        self.phase = ""

    def on_phase_start(self, phase: str) -> None:
        self.phase = phase

    def on_step_end(self, event: StepEnd) -> None:
        if self.phase == "pretrain_layer_2" and event.step == 5:
            raise KeyboardInterrupt

    def on_eval_end(self, event: object) -> None:
        pass

    def on_log(self, event: object) -> None:
        pass


def test_ctrl_c_during_pretraining_leaves_a_readable_interrupted_record(run_tiny):
    outcome = run_tiny(observers=(InterruptIn(),), **pretrained())
    s = json.loads((outcome.path / "summary.json").read_text())
    assert s["status"] == "interrupted" and s["pretrain"]["status"] == "interrupted"
    assert [(r["name"], r["status"], r["steps"]) for r in s["pretrain"]["layers"]] == [
        ("fc1", "completed", 40), ("fc2", "interrupted", 6)]
    assert s["steps_done"] == 0


def test_same_config_and_seed_give_the_same_pretraining(run_tiny):
    sections = pretrained(pretrain={**PRETRAIN, "denoising": 0.2})
    a, b = run_tiny(**sections).summary, run_tiny(**sections).summary
    assert [r["loss_end"] for r in a["pretrain"]["layers"]] == \
        [r["loss_end"] for r in b["pretrain"]["layers"]]
    assert a["final_loss"] == b["final_loss"]


def test_the_report_shows_pretraining_before_the_finetuning_tables(write_yaml, tmp_path):
    path = write_yaml(tiny(**pretrained()))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"),
                                      "--no-plots"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.index("layer-wise pretraining") < out.index("per-layer statistics")
    [run_dir] = (tmp_path / "runs" / "tiny").iterdir()
    fc3 = json.loads((run_dir / "summary.json").read_text())["pretrain"]["layers"][2]
    row = next(line for line in out.splitlines() if line.strip().startswith("fc3 ")
               and "completed" in line)
    assert f"{fc3['loss_start']:.3g}" in row and f"{fc3['loss_end']:.3g}" in row


@pytest.mark.parametrize("changes, message", [
    ({"data": {"kind": "adding", "n_samples": 64, "length": 5}, "model": {"kind": "rnn"}},
     "cfg.yaml: pretrain: layer-wise pretraining is for model.kind mlp, got 'rnn'"),
    ({"model": {"residual": True}},
     "cfg.yaml: pretrain: layer-wise pretraining is for plain MLPs; set model.residual: false"),
    ({"pretrain": {"denoising": 1.0}}, "cfg.yaml: pretrain.denoising: must be < 1"),
    ({"pretrain": {"method": "rbm"}},
     "cfg.yaml: pretrain.method: unknown value 'rbm'; allowed: autoencoder"),
    ({"pretrain": {"steps_per_layr": 5}},
     "cfg.yaml: pretrain.steps_per_layr: unknown key 'steps_per_layr' "
     "(did you mean 'steps_per_layer'?)"),
])
def test_a_bad_pretrain_config_is_refused_with_its_key_path(write_yaml, tmp_path, changes,
                                                            message):
    raw = tiny(**{"pretrain": {}, **changes})
    raw["data"] = changes.get("data", raw["data"])  # a sequence dataset replaces the teacher
    path = write_yaml(raw)
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_the_canonical_pair_differs_only_in_pretraining():
    """Same net, data, seed and fine-tuning budget: the comparison is fair by construction."""
    def load(name: str) -> dict[str, Any]:
        raw = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        config_from_dict(raw, name)  # valid, expect: block included
        return {k: v for k, v in raw.items() if k not in ("name", "pretrain", "expect")}

    assert load("pretrain_sigmoid") == load("scratch_sigmoid")
    assert "pretrain" not in yaml.safe_load((CONFIGS / "scratch_sigmoid.yaml").read_text())


def test_a_diverging_pretraining_is_diagnosed_with_its_phase_layer_and_pretrain_lr(run_tiny):
    outcome = run_tiny(**pretrained(pretrain={**PRETRAIN, "optimizer": "sgd", "lr": 1e6},
                                    train={"lr": 0.003}))
    (diverged,) = [v for v in outcome.summary["verdicts"] if v["kind"] == "diverged"]
    assert "pretrain_layer_1" in diverged["message"] and "fc1" in diverged["message"]
    assert "pretraining" in diverged["message"]
    assert diverged["fixes"][0]["set"] == ["pretrain.lr=100000"]  # a tenth of 1e6
    assert not any("train.lr" in r and "pretrain.lr" not in r for r in diverged["remedies"])


def test_a_divergence_in_a_deeper_pretrained_layer_names_that_layer():
    from gradlab.analyse.verdicts import diagnose

    summary = {"status": "diverged", "layers": [], "first_nonfinite": {
        "phase": "pretrain_layer_2", "step": 7, "layer": "fc2", "what": "reconstruction loss"}}
    config = tiny(**pretrained(pretrain={**PRETRAIN, "lr": 0.5}))
    (verdict,) = diagnose(summary, config)
    assert verdict["kind"] == "diverged" and verdict["layers"] == ["fc2"]
    assert "reconstruction loss of fc2" in verdict["message"]
    assert "step 7" in verdict["message"] and "hidden layer 2" in verdict["message"]
    assert [f["set"] for f in verdict["fixes"]] == [["pretrain.lr=0.05"]]


VANISHED = {"status": "completed", "grad_ratio_init": 1e-7, "grad_ratio_final": 1e-7,
            "layers": [{"name": f"fc{i}", "init": {}, "final": {}} for i in range(1, 5)]}


@pytest.mark.parametrize("model, suggested", [
    ({"activation": "sigmoid", "depth": 20}, True),
    ({"activation": "tanh", "depth": 20}, True),
    ({"activation": "relu", "depth": 20}, False),
    ({"activation": "sigmoid", "depth": 20, "residual": True}, False),
])
def test_vanishing_in_a_plain_saturating_mlp_suggests_layerwise_pretraining(model, suggested):
    from gradlab.analyse.verdicts import diagnose

    def pretraining_fix(config: dict) -> bool:
        [verdict] = [v for v in diagnose(VANISHED, config) if v["kind"] == "vanishing"]
        return any(s.startswith("pretrain.") for f in verdict["fixes"] for s in f["set"])

    assert pretraining_fix(tiny(model=model)) == suggested
    # ... but not when the config already pretrains
    assert not pretraining_fix(tiny(model=model, pretrain=PRETRAIN))


def test_compare_says_how_long_pretraining_took_beside_the_training(write_yaml, tmp_path,
                                                                   monkeypatch):
    """A run's `seconds` are its training steps' only: the progress line adds pretraining's."""
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    path = write_yaml(tiny(**pretrained()))
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["compare", str(path), "--out", str(out), "--no-plots",
                                      "--jobs", "1"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    [run_dir] = (out / "tiny").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    line = next(x for x in result.stderr.splitlines() if "tiny: completed" in x)
    assert (f"in {summary['seconds']:.1f} s (+ {summary['pretrain']['seconds']:.1f} s "
            "pretraining)") in line
