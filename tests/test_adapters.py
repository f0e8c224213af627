"""The optional framework adapters: a tiny MLP trained a few steps on the CPU through
Lightning's Trainer and Hugging Face's Trainer, each with `GradlabCallback`. The record's
per-layer gradient norms and losses equal a plain loop's of the same steps (full-batch SGD, so
the Trainers' shuffling does not matter), with and without gradient accumulation; a raise
leaves a failed record, a NaN a diverged one; `gradlab report` reads it. Each framework's tests
skip, saying so, where its extra is not installed; importing gradlab never imports either.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from conftest import read_csv
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

from gradlab.cli import app
from gradlab.record.reader import read_record

NEEDS_LIGHTNING = ("the Lightning adapter is tested where its extra is installed: "
                   "pip install 'gradlab[lightning]'")
NEEDS_HF = ("the Hugging Face adapter is tested where its extra is installed: "
            "pip install 'gradlab[huggingface]'")

F64 = torch.float64
STEPS, EVERY, LR = 4, 2, 0.5
LOGGED = [0, 2, 3]  # every 2 steps, and the last


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))


def by_hand(net: nn.Module, steps: int = STEPS) -> tuple[list[float], list[list[float]]]:
    """Full-batch SGD on a copy: each step's loss, and each Linear's weight-gradient norm."""
    twin = copy.deepcopy(net)
    x, y = data()
    opt = torch.optim.SGD(twin.parameters(), lr=LR)
    losses, norms = [], []
    for _ in range(steps):
        loss = F.cross_entropy(twin(x), y)
        opt.zero_grad()
        loss.backward()
        losses.append(float(loss.detach()))
        norms.append([float(torch.linalg.vector_norm(m.weight.grad.to(F64)))
                      for m in twin if isinstance(m, nn.Linear)])
        opt.step()
    return losses, norms


def check_record(path: Path, losses: list[float], norms: list[list[float]],
                 tests: list[int]) -> dict[str, Any]:
    """summary.json completed; a metrics row and three layer rows per logged step, with the
    hand-computed loss and gradient norms; test metrics on the steps `tests` evaluated."""
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "completed", summary.get("error")
    assert summary["steps_done"] == STEPS and summary["first_nonfinite"] is None
    _, metrics = read_csv(path / "metrics.csv")
    assert [int(r["step"]) for r in metrics] == sorted(set(LOGGED) | set(tests))
    for row in metrics:
        step = int(row["step"])
        if step in LOGGED:
            assert float(row["loss"]) == pytest.approx(losses[step], rel=1e-5)
            assert float(row["lr"]) == LR
        assert (row["test_loss"] != "") == (step in tests)
    _, layers = read_csv(path / "layers.csv")
    assert [int(r["step"]) for r in layers] == [s for s in LOGGED for _ in range(3)]
    for row in layers:
        hand = norms[int(row["step"])][int(row["layer"])]
        assert float(row["grad_norm"]) == pytest.approx(hand, rel=1e-5), row["name"]
    record = read_record(path)
    assert record.status == "completed" and len(record.layers) == 3 * len(LOGGED)
    return summary


def report(path: Path) -> str:
    shown = CliRunner().invoke(app, ["report", str(path)], env={"COLUMNS": "100"})
    assert shown.exit_code == 0, shown.output
    return str(shown.output)


def assert_failed_after_two_steps(name_dir: Path) -> None:
    """The one record under `name_dir` is a failed run of two steps, with the error's traceback."""
    (path,) = name_dir.iterdir()
    summary = json.loads((path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps_done"] == 2
    assert "RuntimeError: a bad batch" in summary["error"]
    assert "a bad batch" in (path / "traceback.txt").read_text()


def test_importing_gradlab_imports_no_framework() -> None:
    code = ("import sys, gradlab, gradlab.adapters; gradlab.watch; "
            "print(sorted(m for m in ('lightning', 'pytorch_lightning', 'transformers', "
            "'accelerate') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------- Lightning


@pytest.fixture
def pl() -> Any:
    return pytest.importorskip("lightning.pytorch", reason=NEEDS_LIGHTNING)


def lightning_fit(pl: Any, tmp_path: Path, *, batch: int = 8, accumulate: int = 1,
                  fail_at: int | None = None, nan_at: int | None = None,
                  clip_at: float | None = None,
                  **options: Any) -> tuple[Any, nn.Module]:
    from torch.utils.data import DataLoader, TensorDataset

    from gradlab.adapters.lightning import GradlabCallback

    class Module(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def training_step(self, batch: Any, index: int) -> torch.Tensor:
            if self.trainer.global_step == fail_at:
                raise RuntimeError("a bad batch")
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            return loss * math.nan if self.trainer.global_step == nan_at else loss

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            out = self(x)
            self.log("val_loss", F.cross_entropy(out, y))
            self.log("val_acc", (out.argmax(1) == y).float().mean())

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    module = Module()
    net = copy.deepcopy(module.net)
    loader = DataLoader(TensorDataset(*data()), batch_size=batch)
    callback = GradlabCallback(every=EVERY, out=tmp_path / "runs", name="pl", **options)
    trainer = pl.Trainer(max_steps=STEPS, accumulate_grad_batches=accumulate, accelerator="cpu",
                         gradient_clip_val=clip_at,
                         devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=1, default_root_dir=tmp_path, callbacks=[callback])
    trainer.fit(module, loader, DataLoader(TensorDataset(*data()), batch_size=8))
    return callback, net


def test_lightning_records_the_hand_computed_steps(pl: Any, tmp_path: Path) -> None:
    callback, net = lightning_fit(pl, tmp_path)
    losses, norms = by_hand(net)
    # one batch an epoch: validation after every step; the sanity check is not an evaluation
    summary = check_record(callback.watch.path, losses, norms, tests=[0, 1, 2, 3])
    assert callback.watch.layers == ["net.0", "net.2", "net.4"]
    assert set(summary["final_metrics"]) >= {"test_loss", "test_accuracy"}
    assert summary["initial_metrics"]["train_loss"] == pytest.approx(losses[0], rel=1e-5)
    shown = report(callback.watch.path)
    assert "pl" in shown and "net.2" in shown and "verdict" in shown


def test_lightning_gradient_accumulation_records_the_accumulated_gradient(
        pl: Any, tmp_path: Path) -> None:
    # two half batches a step: the gradient the optimizer uses is the full batch's
    callback, net = lightning_fit(pl, tmp_path, batch=4, accumulate=2, module="net")
    losses, norms = by_hand(net)
    check_record(callback.watch.path, losses, norms, tests=[0, 1, 2, 3])
    assert callback.watch.layers == ["Linear[0]", "Linear[2]", "Linear[4]"]  # module="net"


def test_lightning_a_raise_leaves_a_failed_record(pl: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a bad batch"):
        lightning_fit(pl, tmp_path, fail_at=2)
    assert_failed_after_two_steps(tmp_path / "runs" / "pl")


def test_lightning_a_nan_completes_the_record_as_diverged_and_stops(pl: Any, tmp_path: Path) -> None:
    with pytest.warns(RuntimeWarning, match="training stops"):
        callback, _ = lightning_fit(pl, tmp_path, nan_at=1)
    summary = callback.watch.summary
    assert callback.diverged and summary["status"] == "diverged"
    assert summary["first_nonfinite"]["step"] == 1 and summary["steps_done"] == 1


def test_lightning_refuses_what_it_cannot_record_faithfully(pl: Any, tmp_path: Path) -> None:
    import gradlab
    from gradlab.adapters.lightning import GradlabCallback

    with pytest.raises(gradlab.WatchError, match="unknown option"):
        GradlabCallback(steps=3)
    with pytest.raises(gradlab.WatchError, match="unknown gradlab metric"):
        GradlabCallback(metrics={"val_loss": "val_loss"})
    net = mlp()
    opt = torch.optim.SGD(net.parameters(), lr=LR)
    fine = dict(world_size=1, optimizers=[opt], precision="32-true", strategy=None,
                estimated_stepping_batches=4, global_step=0)
    for change, message in [({"world_size": 2}, "one process on one device"),
                            ({"optimizers": [opt, opt]}, "one optimizer"),
                            ({"precision": "16-mixed"}, "precision='16-mixed' is not supported")]:
        callback = GradlabCallback(out=tmp_path / "runs")
        with pytest.raises(gradlab.WatchError, match=message):
            callback.on_train_start(SimpleNamespace(**{**fine, **change}), net)
        assert callback.watch is None and not (tmp_path / "runs").exists()  # nothing written


# ---------------------------------------------------------------- Hugging Face


@pytest.fixture
def hf() -> Any:
    return pytest.importorskip("transformers", reason=NEEDS_HF)


class Classifier(nn.Module):
    """What the Trainer expects of a model: keyword inputs, a dict with `loss` given labels."""

    def __init__(self, fail_at: int | None = None) -> None:
        super().__init__()
        self.net = mlp()
        self.calls, self.fail_at = 0, fail_at

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.training:
            if self.calls == self.fail_at:
                raise RuntimeError("a bad batch")
            self.calls += 1
        logits = self.net(x)
        out = {"logits": logits}
        if labels is not None:
            out["loss"] = F.cross_entropy(logits, labels)
        return out


def hf_train(hf: Any, tmp_path: Path, *, batch: int = 8, accumulate: int = 1,
             fail_at: int | None = None, **options: Any) -> tuple[Any, nn.Module]:
    from gradlab.adapters.huggingface import GradlabCallback

    model = Classifier(fail_at)
    net = copy.deepcopy(model.net)
    x, y = data()
    rows = [{"x": x[i], "labels": y[i]} for i in range(len(y))]

    def accuracy(prediction: Any) -> dict[str, float]:
        return {"accuracy": float((prediction.predictions.argmax(-1) == prediction.label_ids).mean())}

    args = hf.TrainingArguments(
        output_dir=str(tmp_path / "hf"), max_steps=STEPS, per_device_train_batch_size=batch,
        per_device_eval_batch_size=8, gradient_accumulation_steps=accumulate, learning_rate=LR,
        optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
        eval_strategy="steps", eval_steps=2, logging_strategy="no", save_strategy="no",
        report_to="none", use_cpu=True, disable_tqdm=True, dataloader_num_workers=0, seed=0)
    callback = GradlabCallback(every=EVERY, out=tmp_path / "runs", name="hf", **options)
    trainer = hf.Trainer(model=model, args=args, train_dataset=rows, eval_dataset=rows,
                         compute_metrics=accuracy, callbacks=[callback])
    with callback:
        trainer.train()
    return callback, net


def test_hugging_face_records_the_hand_computed_steps(hf: Any, tmp_path: Path) -> None:
    callback, net = hf_train(hf, tmp_path)
    losses, norms = by_hand(net)
    summary = check_record(callback.watch.path, losses, norms, tests=[1, 3])  # eval_steps=2
    assert callback.watch.layers == ["net.0", "net.2", "net.4"]
    assert set(summary["final_metrics"]) >= {"test_loss", "test_accuracy"}
    shown = report(callback.watch.path)
    assert "hf" in shown and "net.2" in shown and "verdict" in shown


def test_hugging_face_gradient_accumulation_records_the_accumulated_gradient(
        hf: Any, tmp_path: Path) -> None:
    callback, net = hf_train(hf, tmp_path, batch=4, accumulate=2)
    losses, norms = by_hand(net)
    check_record(callback.watch.path, losses, norms, tests=[1, 3])


def test_hugging_face_a_raise_leaves_a_failed_record(hf: Any, tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="a bad batch"):
        hf_train(hf, tmp_path, fail_at=2)
    assert_failed_after_two_steps(tmp_path / "runs" / "hf")


def test_hugging_face_refuses_fp16_and_several_processes(hf: Any, tmp_path: Path) -> None:
    import gradlab
    from gradlab.adapters.huggingface import GradlabCallback

    fine = dict(world_size=1, n_gpu=0, fp16=False, bf16=False, max_grad_norm=0.0)
    for change, message in [({"fp16": True}, "fp16 is not supported"),
                            ({"world_size": 2}, "one process on one device")]:
        callback = GradlabCallback(out=tmp_path / "runs")
        with pytest.raises(gradlab.WatchError, match=message):
            callback.on_train_begin(SimpleNamespace(**{**fine, **change}),
                                    hf.TrainerState(max_steps=1), hf.TrainerControl(),
                                    model=Classifier(), optimizer=None)
        assert callback.watch is None and not (tmp_path / "runs").exists()


def test_hugging_face_warns_that_clipped_gradients_are_recorded(
        hf: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from gradlab.adapters.huggingface import GradlabCallback

    args = hf.TrainingArguments(output_dir=str(tmp_path / "hf"), max_steps=1, report_to="none",
                                use_cpu=True)  # max_grad_norm: 1.0 by default
    callback = GradlabCallback(out=tmp_path / "runs", name="clipped")
    with caplog.at_level(logging.WARNING, logger="gradlab.adapters.huggingface"):
        callback.on_train_begin(args, hf.TrainerState(max_steps=1), hf.TrainerControl(),
                                model=Classifier(), optimizer=None)
    callback.close()
    assert "max_grad_norm=1.0" in caplog.text
    assert callback.watch is not None and callback.watch.closed
    # and the record says it: config.yaml's train.clip, seen after the Trainer clipped
    config = yaml.safe_load((callback.watch.path / "config.yaml").read_text())
    assert config["train"]["clip"] == {"by": "norm", "max_norm": 1.0, "seen": "after"}


def test_lightning_counts_the_steps_its_clipping_fires_on(pl: Any, tmp_path: Path) -> None:
    """Lightning clips after on_before_optimizer_step: the norms are seen before clipping, so
    a clip far below them fires on every step, and the record counts it."""
    callback, _ = lightning_fit(pl, tmp_path, clip_at=1e-4)
    summary = callback.watch.summary
    assert summary["clip"] == {"steps_clipped": STEPS, "steps": STEPS, "fraction": 1.0}
    config = yaml.safe_load((callback.watch.path / "config.yaml").read_text())
    assert config["train"]["clip"] == {"by": "norm", "max_norm": 1e-4, "seen": "before"}
