"""The first-NaN sentinel of `gradlab.watch`: the module that *produced* a NaN/Inf is named,
forward or backward, apart from the modules that only passed it on; the replay that finds it
leaves the model, its gradients and the random state as they were.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tiny_config
from torch import nn
from torch.nn import functional as F

import gradlab
from gradlab.watch import AMP_PATIENCE


class Log(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)


class LogLayer(nn.Module):
    """A layer whose own code takes log(0): its child Linear is finite."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log(torch.relu(self.fc(x)))


class InfGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * math.inf  # finite forward, infinite gradient


class Spike(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return InfGrad.apply(x)


def train(model: nn.Module, tmp_path: Path, steps: int = 3, x: torch.Tensor | None = None,
          **options: Any) -> gradlab.Watch:
    torch.manual_seed(0)
    x = torch.randn(16, 8) if x is None else x
    y = torch.randn(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with gradlab.watch(model, every=2, out=tmp_path / "runs", optimizer=opt, **options) as probe:
        for step in range(steps):
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            probe.after_backward(step, loss=loss)
            opt.step()
            probe.after_step(step)
    return probe


def summary(probe: gradlab.Watch) -> dict[str, Any]:
    return json.loads((probe.path / "summary.json").read_text())


@pytest.mark.parametrize("middle, producer", [(Log(), "Log[2]"), (LogLayer(), "LogLayer[2]")])
def test_a_log_of_0_in_a_middle_layer_is_named_as_the_forward_producer(
        tmp_path: Path, middle: nn.Module, producer: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), middle, nn.Linear(8, 8), nn.Tanh(),
                          nn.Linear(8, 1))
    probe = train(model, tmp_path)  # Diverged is raised and absorbed by the with block
    s = summary(probe)
    assert s["status"] == "diverged" and s["steps_done"] == 0
    where = s["first_nonfinite"]
    assert {k: where[k] for k in ("step", "direction", "what", "module")} == {
        "step": 0, "direction": "forward", "what": "output", "module": producer}
    assert where["passed_on"] == ["Linear[3]", "Tanh[4]", "Linear[5]"]  # not producers
    assert where["value"] in ("NaN", "Inf")
    verdict = s["verdicts"][0]
    assert verdict["kind"] == "diverged" and producer in verdict["message"]
    assert producer in verdict["remedies"][0]
    _, metrics = _csv(probe.path / "metrics.csv")
    assert [r["step"] for r in metrics] == ["0"] and metrics[0]["loss"] == "nan"


def test_an_infinite_gradient_is_named_as_the_backward_producer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(inplace=True), nn.Linear(8, 8), Spike(),
                          nn.ReLU(inplace=True), nn.Linear(8, 1))
    with pytest.raises(gradlab.Diverged) as caught:
        probe = gradlab.watch(model, out=tmp_path / "runs")
        loss = model(torch.randn(16, 8)).pow(2).mean()
        loss.backward()
        probe.after_backward(0, loss=loss)
    where = caught.value.where
    assert where["direction"] == "backward" and where["what"] == "gradient"
    assert where["module"] == "Spike[3]"  # its output's gradient is finite, its input's is not
    # the modules below it received the non-finite gradient and passed it on
    assert where["passed_on"] == ["Linear[2]", "ReLU[1]", "Linear[0]"]
    assert "Spike[3] produced" in str(caught.value)
    assert summary(probe)["first_nonfinite"]["module"] == "Spike[3]"
    message = summary(probe)["verdicts"][0]["message"]
    assert "Spike[3] produced NaN in the gradient it sends backward" in message


def test_the_replay_changes_nothing(tmp_path: Path) -> None:
    """Batch-norm statistics, dropout's random draws and the gradients are as they were."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), Spike(),
                          nn.Linear(8, 1))
    probe = gradlab.watch(model, out=tmp_path / "runs", on_nonfinite="record")
    loss = model(torch.randn(16, 8)).pow(2).mean()
    loss.backward()
    stats = [b.clone() for b in model.buffers()]
    grads = [p.grad.clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    probe.after_backward(0, loss=loss)  # replays the step
    assert probe.first_nonfinite is not None and probe.first_nonfinite["module"] == "Spike[3]"
    assert all(torch.equal(a, b) for a, b in zip(stats, model.buffers()))
    assert all(torch.equal(a.nan_to_num(), b.grad.nan_to_num())
               for a, b in zip(grads, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    probe.after_step(0)
    probe.close()


def test_with_record_the_loop_goes_on_and_the_first_one_is_kept(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), Log(), nn.Linear(8, 1))
    probe = train(model, tmp_path, steps=4, on_nonfinite="record")
    s = summary(probe)
    assert s["status"] == "diverged" and s["steps_done"] == 4
    assert s["first_nonfinite"]["step"] == 0 and s["first_nonfinite"]["module"] == "Log[2]"

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    x = torch.randn(16, 8)
    probe = gradlab.watch(model, every=100, out=tmp_path / "runs", on_nonfinite="record")
    for step in range(3):
        out = model(x)
        loss = out.mean() + (math.inf if step == 1 else 0.0)  # step 1 is not a logged step
        model.zero_grad()
        loss.backward()
        probe.after_backward(step, loss)
        probe.after_step(step)
    probe.close()
    _, metrics = _csv(probe.path / "metrics.csv")
    assert [r["step"] for r in metrics] == ["0", "1"] and metrics[1]["loss"] == "inf"


def test_weights_a_batch_and_a_loss_that_went_non_finite_are_told_apart(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    probe = gradlab.watch(model, out=tmp_path / "runs", on_nonfinite="record", every=100)
    x = torch.randn(4, 8)
    for step in range(2):
        loss = model(x).sum()
        model.zero_grad()
        loss.backward()
        probe.after_backward(step, loss=loss)
        with torch.no_grad():
            model[2].weight[0, 0] = math.inf  # an "update" that overflowed
        probe.after_step(step)
    assert probe.first_nonfinite is not None
    assert {k: probe.first_nonfinite[k] for k in ("step", "what", "module")} == {
        "step": 0, "what": "weights", "module": "Linear[2]"}
    probe.close()

    model = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 1))
    bad = torch.randn(16, 8)
    bad[3, 2] = math.nan
    with pytest.raises(gradlab.Diverged, match="the batch of step 0 holds NaN"):
        probe = gradlab.watch(model, out=tmp_path / "runs")
        loss = model(bad).sum()
        loss.backward()
        probe.after_backward(0, loss)
    assert summary(probe)["first_nonfinite"]["what"] == "input"

    probe = gradlab.watch(model, out=tmp_path / "runs", on_nonfinite="record")
    out = model(torch.randn(16, 8))
    loss = out.mean() + torch.log(torch.zeros(()))  # the loss itself takes log(0)
    loss.backward()
    probe.after_backward(0, loss)
    assert probe.first_nonfinite is not None
    assert probe.first_nonfinite["what"] == "loss"
    assert probe.first_nonfinite["direction"] == "forward"
    assert probe.first_nonfinite["value"] == "Inf"  # log(0) = -inf: what it was, not null
    probe.close()
    nan = gradlab.watch(model, out=tmp_path / "runs", on_nonfinite="record")
    loss = model(torch.randn(16, 8)).mean() * torch.tensor(math.nan)
    loss.backward()
    nan.after_backward(0, loss)
    assert nan.first_nonfinite is not None and nan.first_nonfinite["value"] == "NaN"
    nan.close()


def _csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    import csv

    with path.open() as f:
        rows = list(csv.DictReader(f))
    return list(rows[0]) if rows else [], rows


def test_with_a_loss_scaler_only_a_run_of_overflows_is_a_divergence(tmp_path: Path) -> None:
    """A scaler skips a step whose scaled gradients overflowed; a module whose backward is
    infinite at any scale overflows every step, and is then named like any other."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 8), Spike(), nn.Linear(8, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    x = torch.randn(16, 8)
    with gradlab.watch(model, out=tmp_path / "runs", optimizer=opt, scaler=scaler) as probe:
        for step in range(40):
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            scaler.scale(loss).backward()
            probe.after_backward(step, loss=loss)
            scaler.step(opt)
            scaler.update()
            probe.after_step(step)
    where = summary(probe)["first_nonfinite"]
    assert where["step"] == AMP_PATIENCE - 1
    assert where["direction"] == "backward" and where["module"] == "Spike[1]"
    assert summary(probe)["mixed_precision"]["overflowed_steps"] == AMP_PATIENCE


def test_the_trainer_names_the_module_that_produced_an_overflow_as_the_api_does(run_tiny) -> None:
    """gradlab run's trainer locates a divergence with the same sentinel: a net whose init
    multiplies the signal by ~1e7 per layer overflows float32 in a middle layer at step 0. The
    producing Linear is found independently by a bare forward pass of the same batch."""
    from gradlab.runner import build_run
    from gradlab.train.loop import batches

    changes = {"model": {"depth": 8, "width": 16, "activation": "relu",
                         "init": {"scheme": "normal", "std": 1e6}}}
    cfg = tiny_config(**changes)
    data, built = build_run(cfg, torch.device("cpu"))
    idx = next(batches(len(data.x_train), cfg.train.batch_size, cfg.seed, torch.device("cpu")))
    h, expected, passed = data.x_train[idx], None, []
    net = built.model
    with torch.no_grad():  # each module's output in the order they run
        for i in range(8):
            for name, module in ((f"linears.{i}", net.linears[i]),  # type: ignore[index]
                                 (f"norms.{i}", net.norms[i]),  # type: ignore[index]
                                 (f"acts.{i}", net.acts[i])):  # type: ignore[index]
                out = module(h)
                if not out.isfinite().all():
                    if expected is None and h.isfinite().all():
                        expected = i
                    elif expected is not None and not isinstance(module, nn.Identity):
                        passed.append(name)  # an Identity (no norm) is not named
                h = out
        if not net.head(h).isfinite().all():  # type: ignore[operator]
            passed.append("head")
    assert expected is not None and 0 < expected < 7  # an overflow in the middle of the net

    s = run_tiny(**changes).summary
    where = s["first_nonfinite"]
    assert s["status"] == "diverged" and where["step"] == 0
    assert where["direction"] == "forward" and where["what"] == "output"
    assert where["module"] == f"linears.{expected}" and where["layer"] == f"fc{expected + 1}"
    assert where["value"] == "Inf" and where["passed_on"] == passed[:6]
    assert f"the output of fc{expected + 1} became NaN/Inf" in s["verdicts"][0]["message"]
