"""What a logged step costs in two checkouts of gradlab, measured side by side.

`overhead.py` holds one checkout against a bare loop; its whole-run ratios move by 20 % from one
run to the next on a shared machine, too much to tell whether a change made probing dearer by a
few percent. This script times the same four models (`common.MODELS`, 400 steps, probing every
10 steps and every step) in two checkouts of the code, alternating between them repetition by
repetition, and compares what a logged step costs beyond an unlogged one: the CPU time between
two optimiser steps, which is the one event every version of the trainer has. Each repetition of
each checkout runs in a fresh Python process with the checkout first on `sys.path`, so a
checkout is timed with its own code; the models and the timing are this script's.

    .venv/bin/python benchmarks/checkouts.py ab196cd          # that commit against this tree
    .venv/bin/python benchmarks/checkouts.py ab196cd main --reps 3

A commit is checked out with `git worktree add` into a temporary directory, removed at the end.
Figures: the median over repetitions; a logged step's cost is the mean over its logged steps
(every 10th, not the first or the last) of the two intervals it touches (its own forward,
backward and statistics, then its update ratios and record rows) less twice the median
interval of the steps around which nothing was logged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
STEPS = 400
EVERY = 10


def intervals(every: int, cfg_for: Any, run: Any, out: Path) -> list[float]:
    """CPU seconds between consecutive optimiser steps of one run (index k: from step k's
    optimiser step to step k+1's)."""
    import torch  # in the worker only: the driver imports no torch

    stamps: list[float] = []
    originals = {cls: cls.step for cls in (torch.optim.SGD, torch.optim.Adam)}

    def timed(original: Any) -> Any:
        def step(self: Any, *args: Any, **kwargs: Any) -> Any:
            result = original(self, *args, **kwargs)
            stamps.append(time.process_time())
            return result
        return step

    for cls, original in originals.items():
        cls.step = timed(original)  # type: ignore[method-assign]
    try:
        run(cfg_for(every), out)
    finally:
        for cls, original in originals.items():
            cls.step = original  # type: ignore[method-assign]
    if len(stamps) != STEPS:
        raise RuntimeError(f"{len(stamps)} optimiser steps of {STEPS}: the run did not complete")
    return [b - a for a, b in zip(stamps, stamps[1:])]


def logged_cost(iv: list[float]) -> tuple[float, float]:
    """(median interval of a step with nothing logged around it, mean extra of a logged step),
    in seconds, from a run probed every EVERY steps."""
    plain = [t for k, t in enumerate(iv) if k % EVERY != 0 and (k + 1) % EVERY != 0]
    base = statistics.median(plain)
    extra = [iv[s - 1] + iv[s] - 2 * base for s in range(EVERY, STEPS - EVERY, EVERY)]
    return base, statistics.mean(extra)


def worker(out_dir: Path) -> None:
    """One repetition in the checkout first on sys.path: a JSON line per model."""
    import torch
    from common import MODELS  # this script's models, whichever checkout trains them

    # the checkout's gradlab (first on sys.path): imported here, in the worker, only
    from gradlab.config import config_from_dict
    from gradlab.runner import run_config

    torch.set_num_threads(1)
    for name, spec in MODELS.items():
        def cfg_for(every: int, name: str = name, spec: dict[str, Any] = spec) -> Any:
            train = {**spec["train"], "steps": STEPS, "batch_size": 64, "eval_every": STEPS}
            raw = {"name": "bench", "seed": 0, "device": "cpu", "flush_denormal": False,
                   "data": spec["data"], "model": spec["model"], "train": train,
                   "probe": {"every": every, "activations": True}}
            return config_from_dict(raw, name)

        plain, extra = logged_cost(intervals(EVERY, cfg_for, run_config, out_dir))
        every_step = statistics.median(intervals(1, cfg_for, run_config, out_dir))
        print(json.dumps({"model": name, "plain": plain, "logged": extra,
                          "every_step": every_step}), flush=True)


def checkout(ref: str, stack: ExitStack) -> Path:
    """A directory holding `ref`: this tree for '.', else a temporary git worktree."""
    if ref == ".":
        return ROOT
    where = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gradlab-ref-"))) / "tree"
    made = subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q",
                           str(where), ref], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"cannot check out {ref!r}: {made.stderr.strip()}")
    stack.callback(subprocess.run, ["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(where)], check=False)
    return where


def repetition(tree: Path, out_dir: Path) -> list[dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--worker", str(out_dir)], env=env,
                          cwd=tree, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-2000:]}")
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", nargs="?", help="the reference: a commit, branch or tag ('.': this "
                        "tree)")
    parser.add_argument("b", nargs="?", default=".", help="the one measured against it "
                        "(default '.': this working tree)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each (default 5)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    if args.a is None:
        parser.error("name the reference checkout, e.g. a commit: checkouts.py ab196cd")
    results: dict[str, dict[str, list[dict[str, Any]]]] = {"a": {}, "b": {}}
    with ExitStack() as stack:
        trees = {"a": checkout(args.a, stack), "b": checkout(args.b, stack)}
        out_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gradlab-runs-")))
        for rep in range(args.reps):
            order = ("a", "b") if rep % 2 == 0 else ("b", "a")  # neither always runs first
            for side in order:
                print(f"repetition {rep + 1}/{args.reps}: {args.a if side == 'a' else args.b}",
                      flush=True)
                for row in repetition(trees[side], out_dir):
                    results[side].setdefault(row["model"], []).append(row)
    report(results, args.a, args.b)


def report(results: dict[str, dict[str, list[dict[str, Any]]]], a: str, b: str) -> None:
    def med(side: str, model: str, key: str) -> float:
        return statistics.median(r[key] for r in results[side][model])

    print(f"\nA = {a}, B = {b}; CPU ms, median of {len(next(iter(results['a'].values())))} "
          f"repetitions; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{'model':22} {'step A':>7} {'step B':>7} {'logged A':>9} {'logged B':>9} "
          f"{'B/A':>6} {'share A':>8} {'share B':>8} {'every A':>8} {'every B':>8}")
    for model in results["a"]:
        pa, pb = med("a", model, "plain"), med("b", model, "plain")
        la, lb = med("a", model, "logged"), med("b", model, "logged")
        ratio = statistics.median(rb["logged"] / ra["logged"]
                                  for ra, rb in zip(results["a"][model], results["b"][model]))
        ea, eb = med("a", model, "every_step"), med("b", model, "every_step")
        print(f"{model:22} {pa * 1e3:7.2f} {pb * 1e3:7.2f} {la * 1e3:9.2f} {lb * 1e3:9.2f} "
              f"{ratio:5.2f}× {la / (EVERY * pa):8.1%} {lb / (EVERY * pb):8.1%} "
              f"{ea / pa:7.2f}× {eb / pb:7.2f}×")
    print(f"step: an unlogged step; logged: what a logged step costs beyond it; B/A: the median "
          f"of the repetitions' ratios; share: a logged step's cost over {EVERY} unlogged steps "
          f"(probing every {EVERY}); every: a step probed every step over an unlogged one")


if __name__ == "__main__":
    main()
