"""Greedy layer-wise autoencoder pretraining of an MLP's hidden layers, before fine-tuning.

`pretrain(cfg, model, data, observers)` trains hidden layer k as a one-layer autoencoder on
the codes of layers 1..k-1 (Hinton et al. 2006; Bengio et al. 2007), optionally denoising
(Vincent et al. 2008). The encoder *is* the model's own Linear → norm → activation, so the
fine-tuning phase starts from the pretrained weights. Logged rows go to the run record as
phase `pretrain_layer_k`; the returned dict becomes summary.json's `pretrain`.
"""

from __future__ import annotations

import copy
import math
import time
import traceback
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from gradlab.build.dataset import Dataset
from gradlab.build.mlp import MLP
from gradlab.build.optim import build_optimizer
from gradlab.config import Config, PretrainConfig, TrainConfig
from gradlab.train.events import Logged, Observers, StepEnd
from gradlab.train.loop import TrainResult, batches, measure_step


class Autoencoder(nn.Module):
    """x → h = act(norm(W x + b)) → x̂ = out_act(W' h + c), with W' = Wᵀ when tied.

    `linear`, `norm` and `act` are the MLP's own modules (shared, not copied): training
    this autoencoder trains the network's layer in place.
    """

    def __init__(self, linear: nn.Linear, norm: nn.Module, act: nn.Module, tied: bool,
                 out_act: nn.Module):
        super().__init__()
        self.linear, self.norm, self.act, self.out_act = linear, norm, act, out_act
        W = linear.weight.detach()  # (fan_out, fan_in)
        self.bias_out = nn.Parameter(torch.zeros(W.shape[1], device=W.device))
        # An untied decoder starts equal to the tied one and is then trained on its own.
        self.weight_out = None if tied else nn.Parameter(W.t().clone())  # (fan_in, fan_out)

    def encode(self, x: torch.Tensor) -> torch.Tensor:  # (batch, fan_in) → (batch, fan_out)
        return self.act(self.norm(self.linear(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (batch, fan_in) → (batch, fan_in)
        W_out = self.linear.weight.t() if self.weight_out is None else self.weight_out
        return self.out_act(F.linear(self.encode(x), W_out, self.bias_out))


def pretrain(cfg: Config, model: nn.Module, data: Dataset,
             observers: Observers | None = None) -> dict[str, Any]:
    """Pretrain every hidden layer of `model` in turn, input side first; return the summary.

    Like training, a layer that diverges, fails or is interrupted is a result: the layers
    above it are left untouched and the summary's `status` says what happened.
    """
    p = cfg.pretrain
    if p is None or not isinstance(model, MLP):
        raise ValueError("pretrain needs a `pretrain:` section and an MLP")
    if model.block_starts:
        raise ValueError("layer-wise pretraining is not defined for residual MLPs")
    layers: list[dict[str, Any]] = []
    for k in range(1, len(model.linears) + 1):
        layers.append(pretrain_layer(model, k, data.x_train, p, cfg.seed + k, cfg.probe.every,
                                     observers or Observers()))
        if layers[-1]["status"] != "completed":
            break
    model.train()
    return {
        "status": layers[-1]["status"], "error": layers[-1].get("error"),
        "method": p.method, "tied": p.tied, "denoising": p.denoising,
        "optimizer": p.optimizer, "lr": p.lr, "steps_per_layer": p.steps_per_layer,
        "layers": layers, "seconds": round(sum(layer["seconds"] for layer in layers), 3),
    }


def pretrain_layer(model: MLP, k: int, x: torch.Tensor, p: PretrainConfig, seed: int,
                   log_every: int, observers: Observers | None = None) -> dict[str, Any]:
    """Train hidden layer k (1-based) to reconstruct its input, the codes of layer k-1.

    `seconds` counts computing the codes and the training loop, not building the optimiser
    (whose first construction in a process imports much of torch), as in `train`.
    """
    # Layer 1 reconstructs standardised inputs (any real value): a linear read-out. Deeper
    # layers reconstruct codes that lie in the activation's range: read out through it.
    out_act = nn.Identity() if k == 1 else copy.deepcopy(model.acts[k - 1])
    linear = model.linears[k - 1]
    assert isinstance(linear, nn.Linear)  # MLP.linears holds only Linear layers
    ae = Autoencoder(linear, model.norms[k - 1], model.acts[k - 1], p.tied, out_act)
    optimizer = build_optimizer(ae.parameters(), TrainConfig(optimizer=p.optimizer, lr=p.lr))
    tell = observers or Observers()
    tell.on_phase_start(f"pretrain_layer_{k}")
    started = time.perf_counter()
    result: dict[str, Any] = {"layer": k, "name": f"fc{k}", "status": "completed", "steps": 0,
                              "loss_start": None, "loss_end": None, "input_variance": None}
    codes = None
    try:
        codes = _codes(model, x, k - 1)  # (n, fan_in): fixed, the layers below are trained
        # the loss of always answering the mean code: what a reconstruction loss is judged by
        result["input_variance"] = float(codes.var(dim=0, unbiased=False).mean())
        result["loss_start"] = _reconstruction_loss(ae, codes)
        _fit(ae, optimizer, codes, p, seed, log_every, tell, result)
    except KeyboardInterrupt:
        result["status"] = "interrupted"
    except Exception as e:  # a failed layer is recorded, not lost
        result.update(status="failed", error=f"{type(e).__name__}: {e}",
                      traceback=traceback.format_exc())
    if codes is not None and result["status"] != "failed":
        result["loss_end"] = _reconstruction_loss(ae, codes)
    result["seconds"] = round(time.perf_counter() - started, 3)
    return result


def _fit(ae: Autoencoder, optimizer: torch.optim.Optimizer, codes: torch.Tensor,
         p: PretrainConfig, seed: int, log_every: int, tell: Observers,
         result: dict[str, Any]) -> None:
    """The autoencoder's training loop; updates `result` (steps, status) as it goes."""
    k = result["layer"]
    params = [q for q in ae.parameters() if q.requires_grad]
    order = batches(len(codes), min(p.batch_size, len(codes)), seed, codes.device)
    ae.train()
    for step in range(p.steps_per_layer):
        # forward on a minibatch of codes, corrupted by masking noise when denoising
        target = codes[next(order)]
        corrupted = target
        if p.denoising > 0:  # zero a random fraction of the inputs; reconstruct the clean ones
            corrupted = target * (torch.rand_like(target) >= p.denoising).to(target.dtype)
        loss = F.mse_loss(ae(corrupted), target)

        # backward, measured as the training loop does (one sync, where divergence shows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        m = measure_step(loss, params, None)

        # step, unless the loss or a gradient is already NaN/Inf
        if m.finite:
            optimizer.step()
            result["steps"] = step + 1

        # log
        if step % log_every == 0 or step == p.steps_per_layer - 1 or not m.finite:
            tell.on_log(Logged(step, {"step": step, "loss": m.loss, "lr": p.lr,
                                      "grad_norm": m.grad_norm, "clipped": 0}))
        tell.on_step_end(StepEnd(step, p.steps_per_layer, m.loss, m.grad_norm))
        if not m.finite:
            result.update(status="diverged", first_nonfinite={
                "phase": f"pretrain_layer_{k}", "step": step, "layer": f"fc{k}",
                "what": "reconstruction loss" if not math.isfinite(m.loss) else "gradient"})
            return


def unfinished(summary: dict[str, Any]) -> TrainResult | None:
    """The run's result when pretraining did not complete (no fine-tuning follows), else None."""
    if summary["status"] == "completed":
        return None
    last = summary["layers"][-1]
    return TrainResult(status=summary["status"], error=summary.get("error"),
                       first_nonfinite=last.get("first_nonfinite"),
                       traceback=last.pop("traceback", None))


@torch.no_grad()
def _codes(model: MLP, x: torch.Tensor, upto: int) -> torch.Tensor:
    """The output of hidden layer `upto` (the input itself for 0), in eval mode."""
    was_training = model.training
    model.eval()
    h = model.hidden(x, upto=upto)
    model.train(was_training)
    return h


@torch.no_grad()
def _reconstruction_loss(ae: Autoencoder, codes: torch.Tensor) -> float:
    """Mean squared error of reconstructing the clean codes, over the whole training set."""
    was_training = ae.training
    ae.eval()
    loss = float(F.mse_loss(ae(codes), codes))
    ae.train(was_training)
    return loss
