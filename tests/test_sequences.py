"""Sequence tasks and recurrent models: the per-time-step probe against autograd, the tasks'
shapes, baselines and determinism, the recurrent initialisers, and the report of a real run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import merge, read_csv
from torch.nn import functional as F
from typer.testing import CliRunner

from gradlab.analyse.verdicts import diagnose
from gradlab.build import tabular
from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.build.sequences import adding_problem, copy_task
from gradlab.cli import app
from gradlab.config import ConfigError, config_from_dict
from gradlab.train.probe import Probe

SEQ = {
    "name": "tiny_seq", "seed": 0, "device": "cpu",
    "data": {"kind": "adding", "n_samples": 64, "length": 7},
    "model": {"kind": "lstm", "depth": 1, "width": 8},
    "train": {"steps": 6, "batch_size": 16, "optimizer": "adam", "lr": 0.01, "eval_every": 3},
    "probe": {"every": 2},
}


def seq_config(**changes):
    return config_from_dict(merge(SEQ, changes), "seq.yaml")


def fused_time_grads(model, x: torch.Tensor, y: torch.Tensor, loss_fn) -> tuple[torch.Tensor, list]:
    """The loss and ‖∂L/∂h_t‖ computed independently of the model's own unrolling.

    The top layer's fused PyTorch module is stepped one time step at a time, so each h_t is a
    real node of the graph (it feeds both the next step and the read-out), and
    torch.autograd.grad gives the total derivative of the loss with respect to it.
    """
    h = x
    for rnn in model.rnns[:-1]:
        h, _ = rnn(h)
    top, state, hs = model.rnns[-1], None, []
    for t in range(h.shape[1]):
        _, state = top(h[:, t:t + 1], state)
        hs.append(state[0] if isinstance(state, tuple) else state)  # (1, batch, hidden)
    states = torch.cat(hs, dim=0).transpose(0, 1)  # (batch, time, hidden)
    out = model.head(states[:, -1] if model.readout == "last" else states)
    loss = loss_fn(out, y)
    grads = torch.autograd.grad(loss, hs)
    return loss, [torch.linalg.vector_norm(g) for g in grads]


CASES = [
    ("rnn", {"rnn_nonlinearity": "tanh"}, "adding"),
    ("rnn", {"rnn_nonlinearity": "relu", "recurrent_init": "identity"}, "adding"),
    ("lstm", {"forget_bias": 1.0}, "adding"),
    ("gru", {}, "adding"),
    ("lstm", {"depth": 2}, "copy"),
    ("gru", {"depth": 2}, "copy"),
    ("rnn", {}, "digits_sequence"),
]


@pytest.mark.parametrize(("kind", "extra", "task"), CASES)
def test_time_grads_match_autograd_through_the_fused_module(kind, extra, task):
    data_cfg = {"adding": {"kind": "adding", "n_samples": 64, "length": 9},
                "copy": {"kind": "copy", "n_samples": 64, "length": 4, "n_recall": 2},
                "digits_sequence": {"kind": "digits_sequence"}}[task]
    readout = "every" if task == "copy" else "last"
    cfg = config_from_dict({**SEQ, "data": data_cfg,
                            "model": {"kind": kind, "width": 6, "readout": readout, **extra}})
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(0)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model, layers = built.model, built.layers
    x, y = data.x_train[:16], data.y_train[:16]
    if data.task == "regression":
        loss_fn = F.mse_loss
    else:
        def loss_fn(out, target):
            return F.cross_entropy(out.reshape(-1, data.n_out), target.reshape(-1))

    probe = Probe(layers, every=1, last_step=0, time=built.time)
    probe.before_forward(0)
    loss = loss_fn(model(x), y)
    loss.backward()
    probe.after_backward(0)
    rows = probe.after_step(0)
    measured = torch.tensor(probe.time_grads)

    model.zero_grad()
    ref_loss, ref_norms = fused_time_grads(model, x, y, loss_fn)
    torch.testing.assert_close(loss.detach(), ref_loss.detach())
    assert len(measured) == x.shape[1]
    torch.testing.assert_close(measured, torch.stack(ref_norms), rtol=1e-4, atol=1e-9)
    assert measured[-1] > 0
    # The weight rows are still there: input-to-hidden and hidden-to-hidden of each layer, then the head.
    depth = cfg.model.depth
    assert [r["name"] for r in rows] == [f"l{i}.{p}" for i in range(1, depth + 1)
                                         for p in ("ih", "hh")] + ["head"]


def test_unrolling_happens_only_on_sparse_logged_steps_and_never_in_evaluation():
    cfg = seq_config()
    built = build_model(cfg.model, 2, 1)
    model, layers = built.model, built.layers
    x = torch.rand(4, 7, 2)
    probe = Probe(layers, every=5, last_step=9, time=built.time)
    tapped: list[int] = []  # time steps that passed the tap, counted by a hook of our own
    assert built.time is not None
    built.time.tap.register_forward_hook(lambda module, inputs, output: tapped.append(1))
    probe.before_forward(3)
    model(x)
    assert tapped == []  # an unlogged step runs the fused module
    probe.before_forward(5)
    model(x)
    assert tapped == []  # a logged step between the sparse ones runs it fused too
    probe.before_forward(9)
    with torch.no_grad():
        model(x)
    assert tapped == []  # evaluation never unrolls
    model(x)
    assert len(tapped) == 7  # the last step (as the first, and every 8th logged) unrolls
    probe.close()
    model(x)
    assert len(tapped) == 7  # closed: the model runs fused again


# ---------------------------------------------------------------- tasks


def test_adding_problem_targets_and_constant_baseline():
    x, y = adding_problem(20_000, 30, np.random.default_rng(0))
    assert x.shape == (20_000, 30, 2) and y.shape == (20_000, 1)
    markers = x[:, :, 1]
    assert (markers.sum(axis=1) == 2).all()
    assert (markers[:, :15].sum(axis=1) == 1).all()  # one marker in each half
    np.testing.assert_allclose(y[:, 0], (x[:, :, 0] * markers).sum(axis=1))
    # Predicting the constant 1 scores the variance of a sum of two U(0, 1): 2/12.
    assert abs(float(((y - 1.0) ** 2).mean()) - 1 / 6) < 0.005


def test_adding_dataset_reports_its_baseline_and_is_not_standardised():
    data = load_data(config_from_dict({**SEQ, "data": {"kind": "adding", "n_samples": 4000,
                                                        "length": 10}}).data, 0)
    assert data.task == "regression" and (data.n_in, data.n_out) == (2, 1)
    assert data.x_train.shape == (3200, 10, 2) and data.y_test.shape == (800, 1)
    assert data.baseline_loss == pytest.approx(1 / 6, abs=0.015)
    assert set(data.x_train[:, :, 1].unique().tolist()) == {0.0, 1.0}


def test_copy_task_recalls_the_symbols_after_the_delay():
    x, y = copy_task(50, length=6, n_symbols=4, n_recall=3, rng=np.random.default_rng(1))
    assert x.shape == (50, 12, 6) and y.shape == (50, 12)
    seen = x[:, :3].argmax(axis=2)
    np.testing.assert_array_equal(y[:, -3:], seen + 1)
    assert (y[:, :-3] == 0).all()
    assert (x[:, 8].argmax(axis=1) == 5).all()  # the go marker on the last waiting step
    assert (x.sum(axis=2) == 1).all()  # one-hot at every step


def test_digits_sequence_is_eight_rows_of_eight_pixels():
    data = load_data(config_from_dict({**SEQ, "data": {"kind": "digits_sequence"},
                                       "model": {"kind": "rnn"}}).data, 0)
    assert data.x_train.shape == (1438, 8, 8) and data.x_test.shape == (359, 8, 8)
    assert data.task == "classification" and data.n_out == 10
    assert abs(float(data.x_train.mean())) < 1e-5  # standardised with the training split


def test_the_digits_are_scikit_learns_read_without_importing_it(monkeypatch):
    """Read from the file scikit-learn ships: the arrays of `load_digits`, without importing
    scikit-learn (checked in a fresh process); where the file is not found, `load_digits`."""
    from sklearn.datasets import load_digits  # here: at the top, every worker would import it

    bunch = load_digits()
    for found in (True, False):
        if not found:
            monkeypatch.setattr(tabular.importlib.util, "find_spec", lambda name: None)
        images, labels = tabular.digit_images()
        assert images.dtype == np.float64 and labels.dtype == np.int64
        assert np.array_equal(images, bunch.images) and np.array_equal(labels, bunch.target)
    code = ("import sys; from gradlab.build.tabular import digits; x, y = digits(); "
            "assert x.shape == (1797, 64) and 'sklearn' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("data_cfg", [
    {"kind": "adding", "n_samples": 100, "length": 12},
    {"kind": "copy", "n_samples": 100, "length": 5},
    {"kind": "digits_sequence"},
])
def test_tasks_are_deterministic_given_the_seed(data_cfg):
    readout = "every" if data_cfg["kind"] == "copy" else "last"
    cfg = config_from_dict({**SEQ, "data": data_cfg, "model": {"kind": "gru", "readout": readout}})
    a, b, c = load_data(cfg.data, 3), load_data(cfg.data, 3), load_data(cfg.data, 4)
    for name in ("x_train", "y_train", "x_test", "y_test"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name))
    assert not torch.equal(a.y_test, c.y_test)  # another seed, another split


# ---------------------------------------------------------------- models and config


def test_recurrent_initialisers():
    irnn = seq_config(model={"kind": "rnn", "rnn_nonlinearity": "relu", "recurrent_init": "identity",
                             "bias_init": "zeros"})
    built = build_model(irnn.model, 2, 1)
    model, _ = built.model, built.layers
    torch.testing.assert_close(model.rnns[0].weight_hh_l0.detach(), torch.eye(8))
    assert model.rnns[0].bias_hh_l0.abs().sum() == 0
    lstm = seq_config(model={"recurrent_init": "orthogonal", "forget_bias": 1.0})
    built = build_model(lstm.model, 2, 1)
    model, _ = built.model, built.layers
    W, b = model.rnns[0].weight_hh_l0.detach(), model.rnns[0].bias_ih_l0.detach()
    for block in W.chunk(4):  # each gate's recurrent matrix is orthogonal on its own
        torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)
    assert (b[8:16] == 1.0).all() and (model.rnns[0].bias_hh_l0[8:16] == 0).all()


@pytest.mark.parametrize(("changes", "message"), [
    ({"data": {"kind": "copy"}}, "model.readout: data.kind 'copy' needs readout 'every', got 'last'"),
    ({"model": {"readout": "every"}}, "model.readout: data.kind 'adding' needs readout 'last'"),
    ({"model": {"kind": "gru", "forget_bias": 1.0}}, "model.forget_bias: is for model.kind lstm"),
    ({"model": {"kind": "mlp"}}, "model.kind: data.kind 'adding' needs a sequence model"),
])
def test_mismatched_sequence_settings_are_config_errors(changes, message):
    with pytest.raises(ConfigError) as err:
        seq_config(**changes)
    assert message in str(err.value)


# ---------------------------------------------------------------- record, verdict, report


def test_run_shows_the_time_table_and_records_time_grads(write_yaml, tmp_path):
    path = write_yaml(SEQ, "tiny_seq.yaml")
    out = tmp_path / "runs"
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(out), "--no-plots"],
                                env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    [run] = list((out / "tiny_seq").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    init, final = summary["time_grads_init"], summary["time_grads_final"]
    assert len(init) == len(final) == 7 and init != final
    assert summary["time_grad_ratio_init"] == pytest.approx(init[0] / init[-1])
    assert summary["time_grad_ratio_final"] == pytest.approx(final[0] / final[-1])
    after = result.output.split("gradient through time ‖∂L/∂h_t‖ at init and at the end")[1]
    rows = re.findall(r"^\s+(\d+)\s+(\S+)\s+(\S+)\s*$", after.split("‖∂L/∂h_1‖")[0], re.M)
    assert [int(t) for t, _, _ in rows] == list(range(1, 8))
    assert [float(g) for _, g, _ in rows] == pytest.approx(init, rel=5e-3)
    assert "by time step t" in result.output
    steps = {line.split(",")[0] for line in (run / "time_grads.csv").read_text().splitlines()[1:]}
    # the first and the last step (and every 8th logged one): unrolling costs 3× a fused step
    assert steps == {"0", "5"}
    _, layer_rows = read_csv(run / "layers.csv")
    assert {r["step"] for r in layer_rows} == {"0", "2", "4", "5"}  # every logged step


def test_a_diverged_step_records_no_gradients_through_time_it_did_not_measure(tmp_path):
    """configs/rnn_explode.yaml diverges at step 1 or 2, an unlogged step: time_grads.csv
    holds step 0's rows alone (it once held step 0's again, as the divergence step's), and the
    end values are those of the last step measured."""
    from pathlib import Path

    from gradlab.config import load_config
    from gradlab.runner import run_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "rnn_explode.yaml",
                      ["train.steps=40"])
    outcome = run_config(cfg, tmp_path)
    summary = outcome.summary
    assert summary["status"] == "diverged" and summary["first_nonfinite"]["step"] % 25 != 0
    _, rows = read_csv(outcome.path / "time_grads.csv")
    assert {r["step"] for r in rows} == {"0"} and len(rows) == 50
    assert summary["time_grads_final"] == summary["time_grads_init"]  # the last one measured


def test_probing_through_time_does_not_change_the_run(tmp_path):
    """An exploding ReLU RNN, where float rounding grows step by step: the run with the probe
    reading ‖∂L/∂h_t‖ (every step logged, so steps 0 and 8 unroll) trains exactly as the run
    with the probe off, loss for loss."""
    from gradlab.runner import run_config

    losses = []
    for enabled in (True, False):
        cfg = seq_config(model={"kind": "rnn", "width": 16, "rnn_nonlinearity": "relu",
                                "recurrent_init": {"scheme": "orthogonal", "gain": 1.3}},
                         data={"kind": "adding", "n_samples": 64, "length": 12},
                         train={"steps": 12, "optimizer": "sgd", "lr": 0.01, "eval_every": 1},
                         probe={"every": 1, "enabled": enabled})
        record = run_config(cfg, tmp_path / str(enabled)).path
        _, rows = read_csv(record / "metrics.csv")
        losses.append([r["loss"] for r in rows if r["loss"]])
        if enabled:
            _, times = read_csv(record / "time_grads.csv")
            assert {r["step"] for r in times} == {"0", "8", "11"}
    assert len(losses[0]) == 12 and losses[0] == losses[1]


def verdict_kinds(summary: dict, **model) -> dict[str, dict]:
    config = {"model": {"kind": "rnn", **model}, "train": {}}
    return {v["kind"]: v for v in diagnose({"status": "completed", **summary}, config)}


def test_verdict_through_time_names_remedies_that_fit_the_model():
    def sets(v: dict) -> list[list[str]]:
        return [f["set"] for f in v["fixes"]]

    tanh = verdict_kinds({"time_grad_ratio_init": 1e-9, "time_grad_ratio_final": 0.0})
    assert tanh["vanishing_time"]["severity"] == "warning"
    assert sets(tanh["vanishing_time"])[:3] == [["model.kind=lstm", "model.forget_bias=1.0"],
                                                ["model.kind=gru"],
                                                ["model.recurrent_init=orthogonal"]]
    relu = verdict_kinds({"time_grad_ratio_init": 0.0, "time_grad_ratio_final": 0.0},
                         rnn_nonlinearity="relu")
    assert "exactly 0" in relu["vanishing_time"]["message"]
    assert ["model.recurrent_init=identity"] in sets(relu["vanishing_time"])
    lstm = verdict_kinds({"time_grad_ratio_init": 1e-9, "time_grad_ratio_final": 1e-8}, kind="lstm")
    assert sets(lstm["vanishing_time"])[0] == ["model.forget_bias=1.0"]
    # a net that learned its task gets no warning through time, whatever the ratio did
    learnt = verdict_kinds({"time_grad_ratio_init": 1e-9, "time_grad_ratio_final": 0.1,
                            "final_metrics": {"test_loss": 0.001}, "baseline_loss": 0.16},
                           kind="lstm")
    assert learnt["vanishing_time"]["severity"] == "info"
    exploding = verdict_kinds({"time_grad_ratio_init": 1e5, "time_grad_ratio_final": 1e4})
    assert sets(exploding["exploding_time"]) == [["train.clip.max_norm=1.0"],
                                                 ["model.recurrent_init=orthogonal"]]
    # orthogonal already, but scaled past a spectral radius of 1 (rnn_clip): the gain is the cause
    config = {"model": {"kind": "rnn", "recurrent_init": {"scheme": "orthogonal", "gain": 1.75}},
              "train": {"clip": {"by": "norm", "max_norm": 1.0}, "lr": 0.01}}
    found = {v["kind"]: v for v in diagnose(
        {"status": "completed", "time_grad_ratio_init": 1e5, "time_grad_ratio_final": 18.0,
         "over_run": {"grad_norm_max": {"value": 9e11, "step": 0, "layer": "l1.hh"}}}, config)}
    assert sets(found["exploding_time"]) == [["model.recurrent_init.gain=1.0"]]
    assert "now 1.75" in found["exploding_time"]["fixes"][0]["why"]
    assert sets(found["exploding"])[0] == ["model.recurrent_init.gain=1.0"]
    assert not {"vanishing_time", "exploding_time"} & set(verdict_kinds({"time_grad_ratio_init": 0.3}))


def test_canonical_sequence_configs_validate_and_state_their_claims():
    from conftest import CONFIGS

    from gradlab.config import load_config

    names = ("rnn_adding", "lstm_adding", "gru_adding", "rnn_explode", "rnn_clip")
    for name in names:
        path = CONFIGS / f"{name}.yaml"
        cfg = load_config(path)
        assert cfg.name == name and cfg.model.kind in ("rnn", "lstm", "gru")
        assert path.read_text(encoding="utf-8").startswith("# ")  # the claim and its source
        assert "status" in cfg.expect and any(k.startswith("time_grad_ratio") for k in cfg.expect)
    explode, clip = load_config(CONFIGS / "rnn_explode.yaml"), load_config(CONFIGS / "rnn_clip.yaml")
    assert explode.model == clip.model and explode.train.clip is None and clip.train.clip is not None
    adding = [load_config(CONFIGS / f"{k}_adding.yaml") for k in ("rnn", "lstm", "gru")]
    assert len({(c.data, c.train, c.seed) for c in adding}) == 1  # same task, same budget


def test_time_table_says_which_values_underflowed():
    from rich.console import Console

    from gradlab.render.report import time_table

    summary = {"time_grads_init": [1e-9, 1e-3, 1.0], "time_grads_final": [0.0, 0.0, 0.5],
               "time_grad_ratio_init": 1e-9, "time_grad_ratio_final": 0.0}
    console = Console(width=100, record=True)
    console.print(time_table(summary))
    text = console.export_text()
    assert "‖∂L/∂h_1‖ / ‖∂L/∂h_T‖: 1.00e-09 at init, 0 at the end" in text
    assert "2 values of exactly 0 (underflowed) are not drawn" in text
