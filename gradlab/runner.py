"""Run one config end to end: build, train, write the record, diagnose.

`run_config(cfg, out)` is what `gradlab run` and each `compare` worker call. It returns
the run directory and its summary; whatever happens inside training, the record on disk
is completed with a status (completed, diverged, interrupted or failed). A record that
cannot be written (`record.guard`) stops the run at the next write and raises
`RecordWriteError` once the record is completed as failed, or removed if it cannot be.
"""

from __future__ import annotations

import os
import platform
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gradlab import __version__
from gradlab.analyse.theory import predict_mlp
from gradlab.analyse.verdicts import diagnose
from gradlab.build.budget import preflight
from gradlab.build.data import load_data
from gradlab.build.dataset import Dataset
from gradlab.build.model import build_model
from gradlab.build.optim import trivial_baseline
from gradlab.build.probed import Built
from gradlab.config import Config, ConfigError, config_hash, resolved, total_steps
from gradlab.config.checks import batch_size_problems
from gradlab.record.files import uninterrupted
from gradlab.record.guard import GuardedWriter
from gradlab.record.summary import build_summary
from gradlab.train.events import Observer, Observers
from gradlab.train.loop import TrainResult, train
from gradlab.train.pretrain import pretrain, unfinished
from gradlab.train.probe import unit_spread


def baseline_fields(cfg: Config, data: Dataset) -> dict[str, Any]:
    """`baseline_loss` (and `baseline_accuracy`): a sequence task's memoryless predictor where
    the task defines one, else the input-blind predictor of `build.optim.trivial_baseline`."""
    trivial = trivial_baseline(data.y_train.cpu(), data.y_test.cpu(), data.task, data.n_out,
                               cfg.train.loss)
    fields: dict[str, Any] = {"baseline_loss": data.baseline_loss if data.baseline_loss is not None
                              else trivial["loss"]}
    if "accuracy" in trivial:
        fields["baseline_accuracy"] = trivial["accuracy"]
    return fields


@dataclass
class RunOutcome:
    path: Path
    summary: dict[str, Any]


def pick_device(name: str) -> torch.device:
    """`auto` takes CUDA when present; asking for `cuda` without one is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("<config>", [("device", "'cuda' was asked for, but no CUDA device is "
                                                  "available (use auto or cpu)")])
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


@contextmanager
def denormals_flushed(on: bool) -> Iterator[bool]:
    """Flush denormal floats to zero (or not) for a run, then restore the previous settings.

    The flag is thread state: `torch.set_flush_denormal` sets the calling thread only, and
    torch's intra-op worker threads keep IEEE arithmetic (measured: a 4-million-element multiply
    on 2 threads flushed half of its denormal results). A flushing run therefore computes on
    one thread, so that every value is flushed alike. Left on, the flag would also change the
    caller's own float arithmetic after the run. Yields whether flushing is in effect (False
    where the CPU cannot).
    """
    before = sys.float_info.min / 2 == 0.0  # torch has no getter: a denormal result tells
    threads = torch.get_num_threads()
    supported = torch.set_flush_denormal(on)
    if supported and on:
        torch.set_num_threads(1)
    try:
        yield supported and on
    finally:
        torch.set_flush_denormal(before)
        torch.set_num_threads(threads)


def run_config(cfg: Config, out: Path, observers: tuple[Observer, ...] = (),
               threads: int | None = None, place: tuple[Path, str] | None = None,
               overrides: list[str] | None = None) -> RunOutcome:
    """Train one variant and write its complete run record under `out` (out/NAME/STAMP), or at
    `place` (parent, stem): a group's seed-N. `overrides`, the `--set` lines the config was
    loaded with, are recorded in the summary (the resolved config holds their values)."""
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    # Off by default: flushing changes what the network computes where gradients vanish.
    with denormals_flushed(cfg.flush_denormal) as flushed:
        return _run(cfg, out, observers, device, flushed, place, list(overrides or []))


def build_run(cfg: Config, device: torch.device, training: bool = True) -> tuple[Dataset, Built]:
    """The data and the initialised model of a run, seeded as every run seeds them (data, then
    the model, from `cfg.seed`), with the checks only the real sizes allow: a file's batch size
    and the memory pre-flight (with `training`, also what the device cannot train). `gradlab
    predict`, which measures in float32, builds through here with `training` False."""
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed).to(device)
    problems = batch_size_problems(cfg.train.batch_size, len(data.x_train))
    if problems:
        raise ConfigError("<config>", problems)
    preflight(cfg, "<config>", data.n_in, data.n_out, training=training)
    torch.manual_seed(cfg.seed)
    built = build_model(cfg.model, data.n_in, data.n_out)
    built.model.to(device)
    return data, built


def _run(cfg: Config, out: Path, observers: tuple[Observer, ...], device: torch.device,
         flushed: bool, place: tuple[Path, str] | None, overrides: list[str]) -> RunOutcome:
    data, built = build_run(cfg, device)
    steps = total_steps(cfg, len(data.x_train))

    writer = GuardedWriter(out, cfg.name, place)  # a failed write stops the run: RecordWriteError
    writer.write_config(resolved(cfg))
    base = {
        "name": cfg.name, "overrides": [o for o in overrides if o != "seeds=null"],
        "pid": os.getpid(), "device": str(device), "steps_planned": steps,
        "task": data.task, "flush_denormal": flushed,
        "n_params": sum(p.numel() for p in built.model.parameters()),
        "gradlab_version": __version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "config_hash": config_hash(cfg),
        **baseline_fields(cfg, data),
        # mean-field theory at init (analyse.theory), MLPs only; `gradlab predict` adds the measurement
        "prediction": predict_mlp(resolved(cfg)) if cfg.model.kind == "mlp" else None,
        "unit_spread_init": unit_spread(built.layers),
    }
    writer.write_summary({**base, "status": "running", "error": None, "steps_done": 0})
    tell = Observers((writer, *observers))
    extra: dict[str, Any] = {}
    try:
        result: TrainResult | None = None
        if cfg.pretrain is not None:
            extra["pretrain"] = pretrain(cfg, built.model, data, tell)
            tell.on_phase_start("finetune")
            result = unfinished(extra["pretrain"])  # no fine-tuning after a failed pretraining
        if result is None:
            result = train(cfg, built, data, steps, tell)
    except KeyboardInterrupt:
        result = TrainResult(status="interrupted")
    except Exception as e:  # e.g. in pretraining; train() records its own failures
        result = TrainResult(status="failed", error=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc())
    finally:
        writer.close()
    with uninterrupted():  # a second Ctrl-C must not leave the record half-finished
        if result.traceback:
            writer.write_traceback(result.traceback)
        outcome = {**asdict(result), "clip": cfg.train.clip is not None}
        summary = build_summary(writer.path, base, outcome,
                                [list(layer.shape) for layer in built.layers])
        summary.update(extra)
        summary["unit_spread_final"] = unit_spread(built.layers)
        summary["verdicts"] = diagnose(summary, resolved(cfg))
        writer.write_summary(summary)
    writer.check()  # a write that failed mid-run: the record says failed, the caller is told
    return RunOutcome(writer.path, summary)
