"""The public API's overhead: `gradlab.watch(model)` in a user's loop against the bare loop.

Each model is trained for the same steps, on the same batches, with the same optimiser, by
(a) a bare PyTorch loop, and the same loop with:

- (b) the one check a careful loop adds by hand: loss and total gradient norm, one host sync
  (shown for reference: it is the sentinel's unavoidable part);
- (c) `gradlab.watch(model, every=10**9, start=1)`, **the first-NaN sentinel alone**. The API
  has no switch to turn per-layer probing off: `every` is at least 1 and step 0 is always a
  logged step (`step % every == 0`). Numbering the steps from `start=1` with `every=10**9`
  leaves no step logged, so what runs is what runs on every unlogged step: the sentinel's two
  hooks on the model and its one sync per step. The first step alone also runs with the
  probe's module hooks attached, which record the order the layers run in (they capture
  nothing on an unlogged step);
- (d) `every=10` (per-layer statistics with activations on steps 0, 10, 20, ...);
- (e) `every=1`;
- and, where Cockpit (`cockpit-for-pytorch` with `backpack-for-pytorch`) is importable, (f)
  Cockpit's "economy" preset tracked every step and (g) every 10 steps (its
  `schedules.linear(interval=10)`): the model and loss are `backpack.extend`ed, each
  backward runs inside `with cockpit(step, info={batch_size, individual_losses, loss,
  optimizer})`, with the per-example losses from a second `reduction="none"` loss. Cockpit
  is imported lazily: where it is missing, or fails on a model (BackPACK supports few module
  types), the table says why and the rest is measured as usual.

The models: the plain and the ResNet-style CNN of examples/digits_cnn.py and the Post-LN and
Pre-LN Transformers of examples/tiny_transformer.py, imported from there (the examples run
nothing on import), on the 8×8 digits; the 50×100 ReLU+He MLP on the synthetic teacher and
the LSTM on the adding problem (T=50) of overhead.py, built by gradlab from the same configs
(the LSTM as PyTorch's fused nn.LSTM, beside which `watch` runs a time-step shadow on the
steps that record gradients through time: the first, the last and every 8th logged one).

Timing is overhead.py's: CPU seconds (`time.process_time`) of one torch thread, from the
first step to the end of the last; `watch()` and `close()` (which writes summary.json and
the verdicts) happen once, outside that span, and their CPU time is shown beside the
sentinel's row. Every variant of every model runs once untimed for two steps first (a
warm-up, and the check that Cockpit works on the model); then the repetitions are
interleaved, the order of the variants rotating, and each ratio is the median over
repetitions of time / time of the bare loop in the same repetition (the range in brackets).
The run records go to a temporary directory, removed at the end.

Run (`make bench` runs it through run_all.py, without Cockpit):

    .venv/bin/python benchmarks/api_overhead.py [--quick]

With Cockpit, from a scratch venv that never touches .venv or pyproject.toml (torch pinned to
the CPU wheel: cockpit's dependency on torchvision otherwise pulls in another torch; cockpit
1.0.2 imports pkg_resources, gone from setuptools 81):

    python3 -m venv /tmp/cockpit-venv
    echo "torch==2.13.0" > /tmp/torch-pin.txt
    /tmp/cockpit-venv/bin/pip install -c /tmp/torch-pin.txt torch==2.13.0 cockpit-for-pytorch \
        "setuptools<81" typer pyyaml rich pydantic scikit-learn
    /tmp/cockpit-venv/bin/pip install --no-deps -e .
    /tmp/cockpit-venv/bin/python benchmarks/api_overhead.py [--quick]
"""

from __future__ import annotations

import argparse
import gc
import math
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from common import MODELS, Row, median, print_table, ratio_row
from overhead import make_config
from torch import nn
from torch.nn import functional as F

import gradlab
from gradlab.build.data import load_data
from gradlab.build.model import build_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
if str(EXAMPLES) not in sys.path:
    sys.path.insert(0, str(EXAMPLES))

import digits_cnn  # noqa: E402  (examples/: importable, main() runs only as a script)
import tiny_transformer  # noqa: E402

BARE = "bare PyTorch loop"
CHECK = "bare loop + loss/grad-norm check"
SENTINEL = "watch: sentinel alone"
EVERY_10 = "watch every=10"
EVERY_1 = "watch every=1"
COCKPIT_1 = "Cockpit economy, every step"
COCKPIT_10 = "Cockpit economy, every 10"
WATCHED = {SENTINEL: (10**9, 1), EVERY_10: (10, 0), EVERY_1: (1, 0)}  # (every, start)
COCKPIT = {COCKPIT_1: 1, COCKPIT_10: 10}  # the schedule's interval


@dataclass
class Case:
    """One model and its training problem: `build` makes the model (the seed is set first)."""

    name: str
    family: str  # "cnn", "transformer", "mlp" or "lstm": which targets apply
    build: Callable[[], nn.Module]
    optimizer: Callable[[Any], torch.optim.Optimizer]
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    classification: bool

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y) if self.classification else F.mse_loss(out, y)

    def batches(self, steps: int) -> list[torch.Tensor]:
        """The steps' index tensors, shuffled each epoch (the same for every variant)."""
        gen = torch.Generator().manual_seed(0)
        per_epoch = len(self.x) // self.batch_size
        out: list[torch.Tensor] = []
        while len(out) < steps:
            order = torch.randperm(len(self.x), generator=gen)
            out += list(order[:per_epoch * self.batch_size].split(self.batch_size))
        return out[:steps]


def targets(family: str) -> dict[str, float | None]:
    return {SENTINEL: 1.02, EVERY_10: 1.10 if family == "lstm" else 1.05,
            EVERY_1: {"mlp": 1.3, "cnn": 1.5, "transformer": 1.5}.get(family)}


def cases() -> list[Case]:
    sgd_momentum = partial(torch.optim.SGD, lr=0.05, momentum=0.9)  # as digits_cnn.py
    adam = partial(torch.optim.Adam, lr=3e-3)  # as tiny_transformer.py
    img_train, img_y, _, _ = digits_cnn.digit_images()
    row_train, row_y, _, _ = tiny_transformer.digit_rows()
    out = [
        Case("plain CNN (digits_cnn)", "cnn", digits_cnn.PlainCNN, sgd_momentum,
             img_train, img_y, 64, True),
        Case("ResNet CNN (digits_cnn)", "cnn", digits_cnn.ResNetCNN, sgd_momentum,
             img_train, img_y, 64, True),
        Case("Post-LN Transformer", "transformer", partial(tiny_transformer.TinyTransformer, False),
             adam, row_train, row_y, 32, True),
        Case("Pre-LN Transformer", "transformer", partial(tiny_transformer.TinyTransformer, True),
             adam, row_train, row_y, 32, True),
    ]
    for name, family in (("relu+He 50×100", "mlp"), ("LSTM adding T=50", "lstm")):
        cfg = make_config(name, MODELS[name], 1, {})  # overhead.py's model, data and optimiser
        data = load_data(cfg.data, cfg.seed)
        t = cfg.train
        opt = partial(torch.optim.SGD if t.optimizer == "sgd" else torch.optim.Adam, lr=t.lr)
        out.append(Case(f"{'MLP ' if family == 'mlp' else ''}{name}", family,
                        partial(lambda m, n_in, n_out: build_model(m, n_in, n_out).model,
                                cfg.model, data.n_in, data.n_out),
                        opt, data.x_train, data.y_train, t.batch_size, False))
    return out


def fresh(case: Case) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = case.build()
    model.train()
    return model, case.optimizer(model.parameters())


def bare_loop(case: Case, batches: list[torch.Tensor], check: bool = False) -> float:
    """CPU seconds of the steps written plainly; `check` adds the hand-written NaN/Inf test."""
    model, opt = fresh(case)
    x, y = case.x, case.y
    gc.collect()
    started = time.process_time()
    for idx in batches:
        loss = case.loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        if check:
            norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                                  if p.grad is not None])
            loss_v, norm_v = torch.stack([loss.detach(), norm]).tolist()
            if not (math.isfinite(loss_v) and math.isfinite(norm_v)):
                raise RuntimeError(f"{case.name}: diverged; a benchmark must run every step")
        opt.step()
    return time.process_time() - started


def watched_loop(case: Case, batches: list[torch.Tensor], every: int, start: int,
                 out: Path) -> tuple[float, float]:
    """CPU seconds of the same steps under `gradlab.watch`, and of `watch()` + `close()`."""
    model, opt = fresh(case)
    x, y = case.x, case.y
    gc.collect()
    once = time.process_time()
    probe = gradlab.watch(model, every=every, start=start, out=out, name="bench", optimizer=opt)
    started = time.process_time()
    for step, idx in enumerate(batches, start):
        loss = case.loss(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        probe.after_backward(step, loss=loss)
        opt.step()
        probe.after_step(step)
    ended = time.process_time()
    probe.close()
    closed = time.process_time()
    summary = probe.summary or {}
    if summary.get("status") != "completed" or summary.get("steps_done") != len(batches):
        raise RuntimeError(f"{case.name}: {summary.get('status')} after "
                           f"{summary.get('steps_done')} steps; a benchmark must run every step")
    return ended - started, (started - once) + (closed - ended)


def load_cockpit() -> tuple[dict[str, Any] | None, str]:
    """Cockpit's pieces, or None and why it is not importable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # cockpit 1.0.2 imports pkg_resources
            from backpack import extend
            from cockpit import Cockpit
            from cockpit.utils import schedules
            from cockpit.utils.configuration import configuration
    except Exception as e:  # noqa: BLE001  (any failure: the benchmark goes on without it)
        return None, f"{type(e).__name__}: {e}"
    from importlib.metadata import version

    return ({"extend": extend, "Cockpit": Cockpit, "schedules": schedules,
             "configuration": configuration},
            f"cockpit-for-pytorch {version('cockpit-for-pytorch')}, "
            f"backpack-for-pytorch {version('backpack-for-pytorch')}")


def cockpit_loop(case: Case, batches: list[torch.Tensor], interval: int,
                 ck: dict[str, Any]) -> float:
    """CPU seconds of the same steps with Cockpit's economy quantities tracked every
    `interval` steps (the model and the loss extended by BackPACK before the clock starts)."""
    model, opt = fresh(case)
    model = ck["extend"](model)
    loss_fn = ck["extend"](nn.CrossEntropyLoss() if case.classification else nn.MSELoss())

    def individual(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if case.classification:
            return F.cross_entropy(out, y, reduction="none")
        return F.mse_loss(out, y, reduction="none").flatten(1).mean(1)

    quantities = ck["configuration"]("economy",
                                     track_schedule=ck["schedules"].linear(interval=interval))
    cockpit = ck["Cockpit"](model.parameters(), quantities=quantities)
    x, y = case.x, case.y
    gc.collect()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. Alpha on Adam / SGD with momentum
        started = time.process_time()
        for step, idx in enumerate(batches):
            xb, yb = x[idx], y[idx]
            out = model(xb)
            loss = loss_fn(out, yb)
            losses = individual(out, yb)
            opt.zero_grad()
            info = {"batch_size": len(idx), "individual_losses": losses, "loss": loss,
                    "optimizer": opt}
            with cockpit(step, info=info):
                loss.backward(create_graph=cockpit.create_graph(step))
            opt.step()
        return time.process_time() - started


def measure(quick: bool = False) -> list[Row]:
    """Time every (model, variant) pair, repetitions interleaved; return the table's rows."""
    steps, reps = (30, 2) if quick else (200, 5)
    torch.set_num_threads(1)  # as overhead.py: one thread, CPU time
    ck, about = load_cockpit()
    all_cases = cases()
    times: dict[tuple[str, str], list[float]] = {}
    once: dict[str, list[float]] = {}
    failed: dict[str, str] = {}  # case → why Cockpit does not run on it
    with tempfile.TemporaryDirectory(prefix="gradlab-api-overhead-") as tmp:
        out = Path(tmp)

        def jobs(case: Case, batches: list[torch.Tensor]) -> list[tuple[str, Callable[[], Any]]]:
            js: list[tuple[str, Callable[[], Any]]] = [
                (BARE, partial(bare_loop, case, batches)),
                (CHECK, partial(bare_loop, case, batches, True))]
            js += [(v, partial(watched_loop, case, batches, every, start, out))
                   for v, (every, start) in WATCHED.items()]
            if ck is not None and case.name not in failed:
                js += [(v, partial(cockpit_loop, case, batches, interval, ck))
                       for v, interval in COCKPIT.items()]
            return js

        for case in all_cases:  # warm-up, and whether Cockpit runs on the model
            for variant, job in jobs(case, case.batches(2)):
                try:
                    job()
                except Exception as e:  # noqa: BLE001
                    if variant not in COCKPIT:
                        raise
                    failed[case.name] = f"{type(e).__name__}: {str(e).splitlines()[0][:110]}"
        for rep in range(reps):
            for case in all_cases:
                js = jobs(case, case.batches(steps))
                shift = rep % len(js)  # rotate the order so no variant always runs first
                for variant, job in js[shift:] + js[:shift]:
                    result = job()
                    if isinstance(result, tuple):
                        result, setup = result
                        if variant == SENTINEL:
                            once.setdefault(case.name, []).append(setup)
                    times.setdefault((case.name, variant), []).append(result)
    return rows_from(all_cases, times, once, failed, steps, about if ck else None,
                     None if ck else about)


def rows_from(all_cases: list[Case], times: dict[tuple[str, str], list[float]],
              once: dict[str, list[float]], failed: dict[str, str], steps: int,
              cockpit: str | None, missing: str | None) -> list[Row]:
    rows = []
    for case in all_cases:
        n = case.name
        bare = times[(n, BARE)]
        rows.append(Row("api overhead", f"{n}: {BARE}", f"{steps / median(bare):.0f} steps/CPU-s",
                        note=f"{steps} steps, {len(bare)} reps"))
        goals = targets(case.family)

        def ratios(a: str, b: str, n: str = n) -> list[float]:
            return [t / u for t, u in zip(times[(n, a)], times[(n, b)])]

        for variant in (CHECK, SENTINEL, EVERY_10, EVERY_1, COCKPIT_1, COCKPIT_10):
            if (n, variant) not in times:
                continue
            note = f"{steps / median(times[(n, variant)]):.0f} steps/CPU-s"
            if variant == SENTINEL:
                note += (f"; every=10**9, start=1: no step logged; watch()+close() "
                         f"{1e3 * median(once[n]):.0f} ms once")
            if variant == EVERY_1 and goals[EVERY_1] is None:
                note += "; no target given for this model"
            rows.append(ratio_row("api overhead", f"{n}: {variant}", ratios(variant, BARE),
                                  goals.get(variant), note))
        for ours, theirs in ((EVERY_1, COCKPIT_1), (EVERY_10, COCKPIT_10)):
            if (n, theirs) in times:
                rows.append(ratio_row("api vs Cockpit", f"{n}: {ours} / {theirs}",
                                      ratios(ours, theirs), None, "below 1: gradlab is cheaper"))
        if n in failed:
            rows.append(Row("api vs Cockpit", f"{n}: Cockpit economy", "–",
                            note=f"fails on this model: {failed[n]}"))
    if missing is not None:
        rows.append(Row("api vs Cockpit", "Cockpit economy", "–",
                        note=f"not importable here ({missing[:100]}); see this script's docstring"))
    elif cockpit is not None:
        rows.append(Row("api vs Cockpit", "Cockpit", "–", note=cockpit))
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer steps and repetitions")
    print_table(measure(parser.parse_args().quick), "the public API's overhead (gradlab.watch)")
