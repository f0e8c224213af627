"""What a builder declares to a probe: the layers to watch and where their signals pass.

A `ProbedLayer` names one weight matrix, the module that owns it (whose output is the layer's
z_l, where the backward signal ∂L/∂z_l is read) and, optionally, the activation module
applied to the layer's output (whose output statistics the probe keeps).
`TimeSteps` declares a recurrent model's per-time-step tap and the switch that unrolls it.
A probe uses only these: it never reads or sets attributes of a model it was not given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn


@dataclass(frozen=True)
class ProbedLayer:
    """One weight matrix the probe watches, in input-to-output order."""

    name: str
    weight: nn.Parameter
    # the activation module applied to this layer's output: its output is the layer's activation
    activation: nn.Module | None = None
    # the module that owns `weight`: its output is the layer's z_l (None: not watched)
    module: nn.Module | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.weight.shape)


@dataclass(frozen=True)
class TimeSteps:
    """A recurrent model's hidden states over time: `tap` is called on each h_t of the top
    layer while `unroll(True)` is in effect (fused, untapped, after `unroll(False)`)."""

    tap: nn.Module
    unroll: Callable[[bool], None]


@dataclass(frozen=True)
class Built:
    """A built network with its declared probe points."""

    model: nn.Module
    layers: list[ProbedLayer] = field(default_factory=list)
    time: TimeSteps | None = None
