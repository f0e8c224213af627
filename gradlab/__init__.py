"""gradlab: a laboratory for vanishing and exploding gradients in deep networks.

The public API for your own model (imported on first use, so `import gradlab` stays light):

- `gradlab.watch(model, every=10, out="runs", name=None, ...) -> Watch`: hooks on the model's
  layers; call `after_backward(step, loss=loss)` and `after_step(step)` each step, then
  `close()` (or use `with gradlab.watch(...) as probe:`). See `gradlab.watch.watch`.
- `gradlab.Watch`, `gradlab.WatchError` (bad input or misuse), `gradlab.Diverged` (the first
  NaN/Inf, with `where`).
- `gradlab.compare_runs(runs, out="runs")`: a compare record of run records on disk.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Diverged", "Watch", "WatchError", "__version__", "compare_runs", "watch"]

if TYPE_CHECKING:
    from gradlab.watch import Diverged, Watch, WatchError, compare_runs, watch

_LAZY = ("watch", "Watch", "WatchError", "Diverged", "compare_runs")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module("gradlab.watch")
        # `gradlab.watch` is the function; importing the module bound the module there
        for public in _LAZY:
            globals()[public] = getattr(module, public)
        return globals()[name]
    raise AttributeError(f"module 'gradlab' has no attribute {name!r}")
