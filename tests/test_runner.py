"""The run record on disk (files, CSV columns, summary.json fields as DESIGN.md lists them),
determinism on the CPU, and a divergence recorded as a result with its step and layer.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import yaml
from conftest import read_csv, tiny
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.config import config_from_dict, config_hash
from gradlab.record.files import clean

METRIC_COLUMNS = ["step", "phase", "loss", "lr", "grad_norm", "grad_norm_clipped", "clipped",
                  "test_loss", "test_accuracy", "grad_scale"]
LAYER_COLUMNS = ["step", "phase", "layer", "name", "grad_norm", "grad_rms", "grad_absmax",
                 "weight_norm", "update_ratio", "delta_norm", "act_mean", "act_std",
                 "act_saturated", "act_dead", "z_absmax", "overflow", "grad_underflow",
                 "grad_tiny", "act_q05", "act_q50", "act_q95", "grad_q05", "grad_q50",
                 "grad_q95"]
# summary.json fields the run-record contract in DESIGN.md promises.
CONTRACT = {"name", "status", "error", "steps_done", "seconds", "steps_per_second", "device",
            "final_loss", "final_metrics", "grad_ratio_init", "grad_ratio_final", "layers",
            "first_nonfinite", "verdicts", "gradlab_version", "torch_version", "config_hash"}
LAYER_STATS = set(LAYER_COLUMNS) - {"step", "phase", "layer", "name"}
# Fields that measure the machine rather than the experiment.
TIMING = {"seconds", "steps_per_second", "pid"}


def test_the_record_holds_every_file_column_and_field(run_tiny) -> None:
    outcome = run_tiny()  # 10 steps, probed every 2, evaluated every 3
    path = outcome.path
    assert path.parent.name == "tiny" and path.parent.parent.name == "runs"
    assert {p.name for p in path.iterdir()} >= {"config.yaml", "metrics.csv", "layers.csv",
                                                "summary.json"}

    columns, metrics = read_csv(path / "metrics.csv")
    assert columns == METRIC_COLUMNS
    assert [int(r["step"]) for r in metrics] == [0, 2, 4, 5, 6, 8, 9]  # probed or evaluated
    assert [r["test_loss"] != "" for r in metrics] == [False, True, False, True, False, True, True]
    assert all(float(r["lr"]) == 0.01 and r["clipped"] == "0" for r in metrics)

    columns, layers = read_csv(path / "layers.csv")
    assert columns == LAYER_COLUMNS
    assert len(layers) == 6 * 5  # probed steps 0 2 4 6 8 9, five layers each
    assert [r["name"] for r in layers[:5]] == ["fc1", "fc2", "fc3", "fc4", "head"]
    assert [int(r["layer"]) for r in layers[:5]] == [0, 1, 2, 3, 4]

    summary = json.loads((path / "summary.json").read_text())
    assert summary == clean(outcome.summary)  # what was returned is what was written
    assert CONTRACT <= set(summary)
    assert summary["status"] == "completed" and summary["error"] is None
    assert summary["steps_done"] == 10 and summary["device"] == "cpu"
    assert summary["steps_per_second"] > 0 and summary["first_nonfinite"] is None
    assert math.isfinite(summary["final_loss"])
    assert summary["final_metrics"]["train_loss"] == summary["final_loss"]
    assert set(summary["final_metrics"]) == {"train_loss", "test_loss"}

    # grad ratios are the first probed layer's gradient norm over the last's, from layers.csv
    def ratio(step: int) -> float:
        rows = [r for r in layers if int(r["step"]) == step]
        return float(rows[0]["grad_norm"]) / float(rows[-1]["grad_norm"])

    assert summary["grad_ratio_init"] == ratio(0)
    assert summary["grad_ratio_final"] == ratio(9)
    assert [layer["name"] for layer in summary["layers"]] == ["fc1", "fc2", "fc3", "fc4", "head"]
    for layer in summary["layers"]:
        assert LAYER_STATS <= set(layer["init"]) and LAYER_STATS <= set(layer["final"])
    assert summary["layers"][0]["init"]["grad_norm"] == float(layers[0]["grad_norm"])
    assert summary["layers"][0]["shape"] == [16, 8]
    for verdict in summary["verdicts"]:
        assert set(verdict) == {"kind", "severity", "when", "layers", "message", "remedies",
                                "fixes"}

    # config.yaml is the resolved config: enough to rerun the identical experiment
    resolved = yaml.safe_load((path / "config.yaml").read_text())
    assert resolved["model"]["init"]["scheme"] == "default" and "std" in resolved["model"]["init"]
    assert resolved["train"]["optimizer"] == "sgd"  # a default, filled in
    assert config_hash(config_from_dict(resolved)) == summary["config_hash"]


def test_same_config_and_seed_give_identical_numbers(run_tiny) -> None:
    a, b = run_tiny(), run_tiny()
    c = run_tiny(seed=1)
    assert a.path != b.path  # a run directory is never reused
    for name in ("metrics.csv", "layers.csv", "config.yaml"):
        assert (a.path / name).read_text() == (b.path / name).read_text()
    strip = lambda s: clean({k: v for k, v in s.items() if k not in TIMING})  # noqa: E731
    assert strip(a.summary) == strip(b.summary)
    assert (a.path / "layers.csv").read_text() != (c.path / "layers.csv").read_text()
    assert a.summary["final_loss"] != c.summary["final_loss"]


BOOM = {"model": {"activation": "relu", "init": {"scheme": "normal", "std": 3.0}},
        "train": {"lr": 50.0, "steps": 30}, "probe": {"every": 5}}


def test_a_divergence_is_a_result_with_its_step_and_layer(run_tiny) -> None:
    outcome = run_tiny(**BOOM)
    s = outcome.summary
    assert s["status"] == "diverged" and s["error"] is None
    where = s["first_nonfinite"]
    assert where["what"] in ("loss", "output", "activations", "gradient", "weights")
    assert where["layer"] in ["fc1", "fc2", "fc3", "fc4", "head"]
    assert 0 <= where["step"] < 30 and s["steps_done"] == where["step"]
    assert s["verdicts"][0]["kind"] == "diverged"
    assert s["verdicts"][0]["layers"] == [where["layer"]]
    assert f"step {where['step']}" in s["verdicts"][0]["message"]
    # the CSV's last row is the step that went non-finite
    _, metrics = read_csv(outcome.path / "metrics.csv")
    last = metrics[-1]
    assert int(last["step"]) == where["step"]
    assert not (math.isfinite(float(last["loss"])) and math.isfinite(float(last["grad_norm"])))


def test_the_cli_exits_0_on_a_divergence(write_yaml, tmp_path: Path) -> None:
    path = write_yaml(tiny(**BOOM))
    result = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "runs"),
                                      "--json", "--no-plots"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["status"] == "diverged"


def test_a_run_leaves_the_callers_floating_point_mode_as_it_found_it(run_tiny) -> None:
    """A run that flushes denormals must give the process IEEE arithmetic back afterwards."""
    import torch

    def denormals_survive() -> bool:
        # computed at run time (a literal product would be folded by the compiler), in Python
        # floats and in a torch kernel, which is where flushing acts
        small, scale = float("1e-300"), float("1e-10")
        tiny = torch.tensor([1e-30], dtype=torch.float32) * torch.tensor([1e-10])
        return small * scale > 0.0 and bool(tiny.item() > 0.0)

    assert denormals_survive()
    outcome = run_tiny(flush_denormal=True)
    assert outcome.summary["flush_denormal"] is True  # the run itself did flush them
    assert denormals_survive()
    torch.set_flush_denormal(True)  # and the check can tell when they do not
    try:
        assert not denormals_survive()
    finally:
        torch.set_flush_denormal(False)


def test_an_error_in_the_first_evaluation_is_a_failed_result_not_a_crash() -> None:
    """A model whose head is too narrow for the classes fails as soon as its loss is computed."""
    import torch
    from conftest import tiny_config

    from gradlab.build.data import load_data
    from gradlab.build.model import build_model
    from gradlab.train.loop import train

    cfg = tiny_config(data={"kind": "blobs", "n_samples": 64, "n_features": 4, "n_classes": 3})
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, 1)  # one output for three classes
    result = train(cfg, built, data, 5)
    assert result.status == "failed" and result.steps_done == 0
    assert result.error is not None and result.error.startswith("ValueError: ")
    assert "batch_size" in result.error  # torch's own words for the mismatch
    assert result.traceback and "evaluate_splits" in result.traceback
