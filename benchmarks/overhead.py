"""Probing overhead: gradlab's trainer against a bare PyTorch loop on the same model and data.

Each model is trained for the same steps with the same data, batches and optimiser by (a) a
bare loop written here, (b) gradlab's trainer with probing off, (c) probing every 10 steps and
(d) every step with activation statistics. Times are CPU seconds of one torch thread (on a
shared machine far steadier than wall time); repetitions are interleaved and each ratio is the
median over repetitions of time / time of (a). Within (c)'s runs, the step times also give what
a logged step costs beyond an unlogged one, which varies far less between repetitions than the
runs' ratios. Run: `.venv/bin/python benchmarks/overhead.py`.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import MODELS, Row, median, print_table, ratio_row
from torch.nn import functional as F

from gradlab.build.data import load_data
from gradlab.build.model import build_model
from gradlab.config import Config, config_from_dict
from gradlab.runner import run_config
from gradlab.train.events import Evaluated, Logged, StepEnd

# The trainer variants: each is a probe section (and, for the denormal row, a top-level change).
PROBE_OFF = "trainer, probing off"
EVERY_10 = "probing every 10 steps"
EVERY_1 = "every step + activation stats"
FLUSHED = "every 10, denormals flushed"
TRAINER_VARIANTS: dict[str, Callable[[int], dict[str, Any]]] = {
    PROBE_OFF: lambda steps: {"probe": {"enabled": False}},
    EVERY_10: lambda steps: {"probe": {"every": 10, "activations": True}},
    EVERY_1: lambda steps: {"probe": {"every": 1, "activations": True}},
    FLUSHED: lambda steps: {"probe": {"every": 10, "activations": True}, "flush_denormal": True},
}
BARE = "bare PyTorch loop"
BARE_CHECK = "bare loop + divergence check"
BARE_UNROLLED = "bare loop + time-step shadow"  # recurrent models: what probing adds
TARGETS = {PROBE_OFF: 1.02, EVERY_10: 1.05, EVERY_1: 1.15}


def make_config(name: str, spec: dict[str, Any], steps: int, changes: dict[str, Any]) -> Config:
    """A gradlab config for one model: only the final evaluation, as in the bare loop."""
    train = {**spec["train"], "steps": steps, "batch_size": 64, "eval_every": steps}
    raw = {"name": name.split()[0].replace("+", "_"), "seed": 0, "device": "cpu",
           "flush_denormal": False, "data": spec["data"], "model": spec["model"],
           "train": train, **changes}
    return config_from_dict(raw, name)


class Clock:
    """A trainer observer reading the CPU clock where the training loop starts and ends (after
    the first evaluation, and at the end of the last step) and at the end of every step."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.ended: float | None = None
        self.steps: list[float] = []  # CPU seconds of each step

    def on_eval_end(self, event: Evaluated) -> None:
        if self.started is None:
            self.started = self.last = time.process_time()

    def on_step_end(self, event: StepEnd) -> None:
        now = time.process_time()
        self.steps.append(now - self.last)
        self.last = now
        if event.step == event.total - 1:
            self.ended = now

    def on_phase_start(self, phase: str) -> None:
        pass

    def on_log(self, event: Logged) -> None:
        pass


def bare_loop(cfg: Config, check: bool = False, unrolled: bool = False) -> float:
    """CPU seconds for the training steps written plainly: the same model, data, batches and
    optimiser as gradlab's trainer, and its one final evaluation; `check` adds the trainer's
    per-step divergence test (total gradient norm, one sync); `unrolled` runs a recurrent
    model's time-step shadow (`build.stepwise`) on every step, as the probe has it do on the
    steps that record gradients through time."""
    torch.set_flush_denormal(cfg.flush_denormal)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    model = built.model
    t = cfg.train
    assert t.steps is not None
    if t.optimizer == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(model.parameters(), lr=t.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    x, y = data.x_train, data.y_train
    gen = torch.Generator().manual_seed(cfg.seed)
    per_epoch = len(x) // t.batch_size
    model.train()
    if unrolled and built.time is not None:
        built.time.unroll(True)
    started = time.process_time()
    for step in range(t.steps):
        if step % per_epoch == 0:
            order = torch.randperm(len(x), generator=gen)
        idx = order[(step % per_epoch) * t.batch_size:(step % per_epoch + 1) * t.batch_size]
        loss = F.mse_loss(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if check:
            grads = [p.grad for p in model.parameters() if p.grad is not None]
            norm = torch.nn.utils.get_total_norm(grads)
            loss_v, norm_v = torch.stack([loss.detach(), norm]).tolist()
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                break
        opt.step()
    model.eval()
    with torch.no_grad():
        float(F.mse_loss(model(data.x_test), data.y_test))
    return time.process_time() - started


def trainer(cfg: Config, out: Path, logged: list[float] | None = None) -> float:
    """CPU seconds of gradlab's training loop: the steps and the evaluation at the last step,
    including writing the record's rows. With `logged`, append what a logged step costs beyond
    an unlogged one, in CPU seconds: the mean of the logged steps (every `probe.every`-th, but
    not the first or the last; a mean, for the sparse steps that also take quantiles and
    gradients through time) less the median of the others."""
    clock = Clock()
    summary = run_config(cfg, out, (clock,)).summary
    if summary["status"] != "completed" or summary["steps_done"] != cfg.train.steps:
        raise RuntimeError(f"{cfg.name}: {summary['status']} after {summary['steps_done']} steps; "
                           "a benchmark must run every step")
    assert clock.started is not None and clock.ended is not None
    if logged is not None:
        every, times = cfg.probe.every, clock.steps[1:-1]  # no first or last step
        probed = [t for step, t in enumerate(times, 1) if step % every == 0]
        plain = [t for step, t in enumerate(times, 1) if step % every not in (0, 1)]
        logged.append(sum(probed) / len(probed) - median(plain))
    return clock.ended - clock.started


def measure(quick: bool = False) -> list[Row]:
    """Time every (model, variant) pair, repetitions interleaved; return the table's rows."""
    steps, reps = (60, 3) if quick else (200, 5)
    torch.set_num_threads(1)  # as one `compare` worker per core runs; steadier when shared
    times: dict[tuple[str, str], list[float]] = {}
    logged: dict[str, list[float]] = {name: [] for name in MODELS}  # a logged step's extra
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(reps):
            for name, spec in MODELS.items():
                base = make_config(name, spec, steps, {})
                jobs: list[tuple[str, Callable[[], float]]] = [
                    (BARE, partial(bare_loop, base)), (BARE_CHECK, partial(bare_loop, base, True))]
                if spec["model"].get("kind") in ("rnn", "lstm", "gru"):
                    jobs.append((BARE_UNROLLED, partial(bare_loop, base, unrolled=True)))
                for variant, changes in TRAINER_VARIANTS.items():
                    if variant == FLUSHED and "sigmoid" not in name:
                        continue
                    cfg = make_config(name, spec, steps, changes(steps))
                    jobs.append((variant, partial(trainer, cfg, Path(tmp),
                                                  logged[name] if variant == EVERY_10 else None)))
                shift = rep % len(jobs)  # rotate the order so no variant always runs first
                for variant, job in jobs[shift:] + jobs[:shift]:
                    times.setdefault((name, variant), []).append(job())
    return rows_from(times, steps, logged)


def rows_from(times: dict[tuple[str, str], list[float]], steps: int,
              logged: dict[str, list[float]]) -> list[Row]:
    rows = []
    for name in MODELS:
        bare = times[(name, BARE)]
        rows.append(Row("overhead", f"{name}: {BARE}", f"{steps / median(bare):.0f} steps/CPU-s",
                        note=f"{steps} steps, {len(bare)} reps"))
        for variant in (BARE_CHECK, BARE_UNROLLED, PROBE_OFF, EVERY_10, EVERY_1):
            if (name, variant) not in times:
                continue
            ts = times[(name, variant)]
            ratios = [t / b for t, b in zip(ts, bare)]
            rows.append(ratio_row("overhead", f"{name}: {variant}", ratios, TARGETS.get(variant),
                                  f"{steps / median(ts):.0f} steps/CPU-s"))
        # a logged step against the unlogged steps of the same runs: far steadier than the
        # ratios of whole runs, which vary by ±15 % from one repetition to the next
        if logged[name]:
            extra = median(logged[name])
            step = median(bare) / steps
            rows.append(Row("overhead", f"{name}: a logged step's probe, every 10",
                            f"{extra * 1e3:.1f} ms", note=f"{extra / step:.2f} bare steps; "
                            f"{extra / step / 10:.1%} of the run's time at every 10"))
        # the trainer's one piece of per-step work beyond the bare loop is that same check
        ratios = [t / b for t, b in zip(times[(name, PROBE_OFF)], times[(name, BARE_CHECK)])]
        rows.append(ratio_row("overhead", f"{name}: probing off / bare loop + check", ratios,
                              TARGETS[PROBE_OFF], "no hidden work beyond the check"))
        if (name, FLUSHED) in times:
            ratios = [k / f for k, f in zip(times[(name, EVERY_10)], times[(name, FLUSHED)])]
            rows.append(ratio_row("denormals", f"{name}: kept / flushed", ratios, None,
                                  "time with flush_denormal: false over true"))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    print_table(measure(parser.parse_args().quick), "probing overhead")
