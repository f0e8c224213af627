"""Run one config end to end: build, train, write the record, diagnose.

`run_config(cfg, out)` is what `gradlab run` and each `compare` worker call. It returns
the run directory and its summary; whatever happens inside training, the record on disk
is completed with a status (completed, diverged, interrupted or failed).
"""

from __future__ import annotations

import math
import os
import platform
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gradlab import __version__
from gradlab.config import Config, ConfigError, config_hash, resolved, total_steps
from gradlab.data import load_data
from gradlab.diagnose import diagnose
from gradlab.models import build_model
from gradlab.record import RunWriter, uninterrupted
from gradlab.train import TrainResult, train


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


def run_config(cfg: Config, out: Path, observers: tuple[Any, ...] = (),
               threads: int | None = None) -> RunOutcome:
    """Train one variant and write its complete run record under `out`.

    Flushing denormals is a setting of the run: the caller's floating-point mode is restored
    afterwards (flushed denormals break any later code that needs IEEE arithmetic).
    """
    was_flushed = _denormals_flushed()
    try:
        return _run_config(cfg, out, observers, threads)
    finally:
        torch.set_flush_denormal(was_flushed)


def _denormals_flushed() -> bool:
    """Whether this thread flushes denormal floats to zero (torch has no getter for it)."""
    return float(torch.tensor(1e-30) * 1e-10) == 0.0  # 1e-40 is a float32 denormal


def _run_config(cfg: Config, out: Path, observers: tuple[Any, ...],
                threads: int | None) -> RunOutcome:
    if threads:
        torch.set_num_threads(threads)
    device = pick_device(cfg.device)
    # Vanishing gradients are full of denormal floats, which are several times slower on CPUs.
    flushed = torch.set_flush_denormal(cfg.flush_denormal)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg.data, cfg.seed).to(device)
    if cfg.train.batch_size > len(data.x_train):  # a file's size is known only now
        raise ConfigError("<config>", [("train.batch_size", f"must be ≤ the {len(data.x_train)} "
                                        f"training examples, got {cfg.train.batch_size}")])
    torch.manual_seed(cfg.seed)
    model, layers = build_model(cfg.model, data.n_in, data.n_out)
    model.to(device)
    steps = total_steps(cfg, len(data.x_train))

    writer = RunWriter(out, cfg.name)
    writer.write_config(resolved(cfg))
    base = {
        "name": cfg.name, "pid": os.getpid(), "device": str(device), "steps_planned": steps,
        "task": data.task, "flush_denormal": bool(cfg.flush_denormal and flushed),
        "n_params": sum(p.numel() for p in model.parameters()),
        "gradlab_version": __version__, "torch_version": torch.__version__,
        "python_version": platform.python_version(), "config_hash": config_hash(cfg),
        "baseline_loss": data.baseline_loss,
    }
    writer.write_summary({**base, "status": "running", "error": None, "steps_done": 0})
    observers = (writer, *observers)
    extra: dict[str, Any] = {}
    try:
        result: TrainResult | None = None
        if cfg.pretrain is not None:
            from gradlab.pretrain import pretrain, unfinished

            extra["pretrain"] = pretrain(cfg, model, data, observers)
            writer.on_phase_start("finetune")
            result = unfinished(extra["pretrain"])  # no fine-tuning after a failed pretraining
        if result is None:
            result = train(cfg, model, layers, data, steps, observers)
    except KeyboardInterrupt:
        result = TrainResult(status="interrupted")
    except Exception as e:  # e.g. in pretraining; train() records its own failures
        result = TrainResult(status="failed", error=f"{type(e).__name__}: {e}",
                             traceback=traceback.format_exc())
    finally:
        writer.close()
    with uninterrupted():  # a second Ctrl-C must not leave the record half-finished
        if result.traceback:
            (writer.path / "traceback.txt").write_text(result.traceback, encoding="utf-8")
        summary = build_summary(base, result, writer, layers_shapes(layers))
        summary.update(extra)
        summary["verdicts"] = diagnose(summary, resolved(cfg))
        writer.write_summary(summary)
    return RunOutcome(writer.path, summary)


def layers_shapes(layers: list[Any]) -> list[list[int]]:
    return [list(layer.shape) for layer in layers]


def build_summary(base: dict[str, Any], result: TrainResult, writer: RunWriter,
                  shapes: list[list[int]]) -> dict[str, Any]:
    """summary.json's fields (DESIGN.md) from the training result and the logged rows."""
    first, last = writer.first_layers, writer.last_layers
    final = result.final
    summary = {
        **base,
        "status": result.status,
        "error": result.error,
        "steps_done": result.steps_done,
        "seconds": round(result.seconds, 3),
        "steps_per_second": result.steps_done / result.seconds if result.seconds > 0 else None,
        "initial_loss": result.initial.get("train_loss"),
        "final_loss": final.get("train_loss"),
        "loss_ratio": _ratio(final.get("train_loss"), result.initial.get("train_loss")),
        "final_metrics": final,
        "grad_ratio_init": _grad_ratio(first),
        "grad_ratio_final": _grad_ratio(last),
        "grad_norm_min_init": _min(first, "grad_norm"),
        "grad_norm_min_final": _min(last, "grad_norm"),
        "weight_norm_init": _total(first, "weight_norm"),
        "weight_norm_final": _total(last, "weight_norm"),
        "clip_fraction": result.clipped_steps / result.steps_done if result.steps_done else None,
        "first_nonfinite": result.first_nonfinite,
        "layers": [
            {"index": i, "name": row["name"], "shape": shapes[i] if i < len(shapes) else None,
             "init": _stats(row), "final": _stats(last[i]) if i < len(last) else None}
            for i, row in enumerate(first)
        ],
    }
    if writer.first_time_grads is not None:  # recurrent models: gradients through time
        summary.update({
            "time_grads_init": writer.first_time_grads,
            "time_grads_final": writer.last_time_grads,
            "time_grad_ratio_init": _edge_ratio(writer.first_time_grads),
            "time_grad_ratio_final": _edge_ratio(writer.last_time_grads),
        })
    return summary


def _stats(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("step", "layer", "name", "phase")}


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return None
    return a / b


def _grad_ratio(rows: list[dict[str, Any]]) -> float | None:
    """Gradient norm of the first probed layer over that of the last."""
    if len(rows) < 2:
        return None
    return _ratio(rows[0]["grad_norm"], rows[-1]["grad_norm"])


def _edge_ratio(values: list[float] | None) -> float | None:
    """‖∂L/∂h_1‖ / ‖∂L/∂h_T‖ for a recurrent model; None for others."""
    if not values or len(values) < 2:
        return None
    return _ratio(values[0], values[-1])


def _min(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if math.isfinite(r[key])]
    return min(values) if values else None


def _total(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows]
    return math.sqrt(sum(v * v for v in values)) if values else None
