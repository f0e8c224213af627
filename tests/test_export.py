"""`gradlab export --tensorboard`: event files read back with TensorBoard's own reader.

The scalars are checked against the record's CSVs read independently (the csv module, as any
outside reader sees them); NaN/Inf and magnitudes beyond float32 are left out or clamped,
never a crash, and reported. Tests needing TensorBoard skip without the `tensorboard` extra;
the message without it is checked either way.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import read_csv, tiny
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.export import F32_MAX, F32_TINY, METRICS

NEEDS = "TensorBoard export is tested where the optional extra is installed: pip install -e '.[tensorboard]'"


def run_cli(*args: str) -> Any:
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "100"})


def events(run_dir: Path) -> Any:
    """The event files of one TensorBoard run, every value kept (no reservoir sampling)."""
    pytest.importorskip("tensorboard", reason=NEEDS)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: Any, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in acc.Scalars(tag)}


def f32(text: str) -> float:
    return float(np.float32(float(text)))


def record(tmp_path: Path, name: str = "tiny", data: dict[str, Any] | None = None,
           **changes: Any) -> Path:
    """A tiny run's record, made by `gradlab run` (10 steps, probed every 2); `data` replaces
    the data section."""
    cfg = tmp_path / f"{name}.yaml"
    config = tiny(name=name, **changes) | ({"data": data} if data else {})
    cfg.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run_cli("run", cfg, "--out", tmp_path / "runs", "--no-plots", "--quiet")
    assert result.exit_code == 0, result.output
    [run] = (tmp_path / "runs" / name).iterdir()
    return run


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    pytest.importorskip("tensorboard", reason=NEEDS)
    return record(tmp_path)


def test_a_run_exports_the_values_of_its_csvs(run_dir: Path, tmp_path: Path) -> None:
    result = run_cli("export", run_dir, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    assert "exported 1 TensorBoard run(s)" in result.output and "tensorboard --logdir" in result.output
    acc = events(tmp_path / "tb" / "tiny")

    _, metrics = read_csv(run_dir / "metrics.csv")
    for column in METRICS:
        wanted = {int(r["step"]): f32(r[column]) for r in metrics if r[column] != ""}
        if wanted:
            assert scalars(acc, column) == wanted, column
    assert "loss" in acc.Tags()["scalars"] and "test_loss" in acc.Tags()["scalars"]

    _, layers = read_csv(run_dir / "layers.csv")
    compared = 0
    for stat in ("grad_norm", "update_ratio", "act_std", "weight_norm"):
        for name in {r["name"] for r in layers}:
            wanted = {int(r["step"]): f32(r[stat]) for r in layers if r["name"] == name and r[stat]}
            if wanted:
                assert scalars(acc, f"layers/{name}/{stat}") == wanted, (name, stat)
                compared += len(wanted)
    assert compared > 50

    # one histogram of log10 ‖g‖ over the layers per logged step
    steps = sorted({int(r["step"]) for r in layers})
    grads = acc.Histograms("by_layer/log10_grad_norm")
    assert [h.step for h in grads] == steps
    first = [math.log10(float(r["grad_norm"])) for r in layers if int(r["step"]) == steps[0]]
    assert grads[0].histogram_value.num == len(first)
    assert grads[0].histogram_value.min == pytest.approx(min(first))
    assert grads[0].histogram_value.max == pytest.approx(max(first))

    # the config and summary as text, the headline numbers on the HPARAMS tab
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "activation: tanh" in text
    assert "summary/text_summary" in acc.Tags()["tensors"]
    assert "hparams/final_loss" in acc.Tags()["scalars"]


def test_nan_inf_and_huge_values_are_left_out_or_clamped_and_reported(run_dir: Path,
                                                                      tmp_path: Path) -> None:
    header, layers = read_csv(run_dir / "layers.csv")
    last = max(int(r["step"]) for r in layers)
    fc1 = [r for r in layers if r["name"] == "fc1"]
    fc1[0]["grad_norm"], fc1[1]["grad_norm"], fc1[2]["grad_norm"] = "nan", "inf", "1e-60"
    fc1[-1]["act_std"], fc1[-1]["weight_norm"] = "-inf", "1e300"
    write_csv(run_dir / "layers.csv", header, layers)
    mheader, metrics = read_csv(run_dir / "metrics.csv")
    metrics[-1]["loss"] = "nan"
    write_csv(run_dir / "metrics.csv", mheader, metrics)

    result = run_cli("export", run_dir, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "4 non-finite (NaN/Inf) scalars left out (act_std 1, grad_norm 2, loss 1" in out
    assert "2 scalars clamped into float32's range" in out
    acc = events(tmp_path / "tb" / "tiny")
    grad = scalars(acc, "layers/fc1/grad_norm")
    assert int(fc1[0]["step"]) not in grad and int(fc1[1]["step"]) not in grad
    assert grad[int(fc1[2]["step"])] == pytest.approx(F32_TINY)  # 1e-60 would be a float32 zero
    assert scalars(acc, "layers/fc1/weight_norm")[last] == pytest.approx(F32_MAX)
    assert last not in scalars(acc, "layers/fc1/act_std")
    assert int(metrics[-1]["step"]) not in scalars(acc, "loss")
    # the histograms of those steps hold the other layers' values, never a NaN
    for h in acc.Histograms("by_layer/log10_grad_norm"):
        assert math.isfinite(h.histogram_value.min) and math.isfinite(h.histogram_value.max)
    note = acc.Tensors("export/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "non-finite" in note


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    import csv

    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)


def test_a_compare_record_is_one_tensorboard_run_per_variant_and_seed(tmp_path: Path,
                                                                      monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS)
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.yaml").write_text(yaml.safe_dump(tiny(name="a")), encoding="utf-8")
    (configs / "b.yaml").write_text(yaml.safe_dump(tiny(name="b", seeds=[0, 1])), encoding="utf-8")
    result = run_cli("compare", configs, "--out", tmp_path / "runs", "--no-plots", "--jobs", "1")
    assert result.exit_code == 0, result.output
    [compare_dir] = (tmp_path / "runs").glob("compare-*")

    result = run_cli("export", compare_dir, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    assert "a, b/seed-0, b/seed-1" in result.output
    for name, seed in (("a", None), ("b", 0), ("b", 1)):
        place = tmp_path / "tb" / name / (f"seed-{seed}" if seed is not None else "")
        run = compare_dir / "variants" / name / (f"seed-{seed}" if seed is not None else "")
        _, metrics = read_csv(run / "metrics.csv")
        assert scalars(events(place), "loss") == {int(r["step"]): f32(r["loss"]) for r in metrics}
    # the group on its own: runs/b (a name directory) exports its latest, seed by seed
    result = run_cli("export", tmp_path / "runs" / "b", "--tensorboard", tmp_path / "tb2")
    assert result.exit_code == 0, result.output
    assert "the latest of 1" in result.output and "b/seed-0, b/seed-1" in result.output


def test_a_recurrent_run_exports_its_gradients_through_time(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS)
    run = record(tmp_path, "rnn", data={"kind": "adding", "n_samples": 64, "length": 6},
                 model={"kind": "rnn", "depth": 1, "width": 8, "activation": "tanh"},
                 train={"steps": 6, "batch_size": 16, "optimizer": "adam", "lr": 0.01})
    assert run_cli("export", run, "--tensorboard", tmp_path / "tb").exit_code == 0
    acc = events(tmp_path / "tb" / "rnn")
    _, rows = read_csv(run / "time_grads.csv")
    for t in {int(r["t"]) for r in rows}:
        assert scalars(acc, f"time_grads/t={t:03d}") == \
            {int(r["step"]): f32(r["grad_norm"]) for r in rows if int(r["t"]) == t}
    assert [h.histogram_value.num for h in acc.Histograms("by_time/log10_grad_norm")] == \
        [6.0] * len({r["step"] for r in rows})


def test_a_sweep_record_is_one_tensorboard_run_per_point(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS)
    monkeypatch.setattr("gradlab.compare.EXECUTOR", "thread")
    spec = tmp_path / "tiny.yaml"
    spec.write_text(yaml.safe_dump(tiny()), encoding="utf-8")
    result = run_cli("sweep", spec, "--grid", "model.depth=2,3", "--jobs", "1", "--out",
                     tmp_path / "runs", "--no-plots", "--quiet")
    assert result.exit_code == 0, result.output
    [sweep_dir] = (tmp_path / "runs").glob("sweep-*")
    result = run_cli("export", sweep_dir, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["tiny.depth_2", "tiny.depth_3"]
    _, layers = read_csv(sweep_dir / "variants" / "tiny.depth_2" / "layers.csv")
    assert {r["name"] for r in layers} == {"fc1", "fc2", "head"}
    tags = events(tmp_path / "tb" / "tiny.depth_2").Tags()["scalars"]
    assert "layers/fc2/grad_norm" in tags and "layers/fc3/grad_norm" not in tags


def test_an_earlier_export_is_refused_unless_overwritten(run_dir: Path, tmp_path: Path) -> None:
    tb = tmp_path / "tb"
    assert run_cli("export", run_dir, "--tensorboard", tb).exit_code == 0
    again = run_cli("export", run_dir, "--tensorboard", tb)
    assert again.exit_code == 2 and "already holds event files" in again.output
    assert run_cli("export", run_dir, "--tensorboard", tb, "--overwrite").exit_code == 0
    assert len(list((tb / "tiny").glob("events.out.tfevents.*"))) == 1


def test_bad_input_exits_2_with_a_clear_message(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason=NEEDS)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("export", empty, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 2 and "not a gradlab record" in result.output
    run = record(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = run_cli("export", run, "--tensorboard", blocker / "tb")
    assert result.exit_code == 2 and "cannot write there" in result.output
    result = run_cli("export", run)
    assert result.exit_code == 2 and "--tensorboard DIR" in result.output


def test_without_the_extra_export_says_how_to_install_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` fails
    result = run_cli("export", tmp_path, "--tensorboard", tmp_path / "tb")
    assert result.exit_code == 2
    assert "pip install 'gradlab[tensorboard]'" in result.output
