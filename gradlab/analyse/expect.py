"""Checking a config's `expect:` block against its runs' summaries.

Keys are summary.json fields, dotted for nested ones (`final_metrics.test_accuracy`); a
value is a literal (`status: diverged`) or a range (`{min: x}`, `{max: y}` or both).
`check(expect, summary)` returns one `Expectation` per key; nothing is evaluated as code.

Two keys are not summary fields:
- `over: mean` checks the ranges against the mean over a group's seeds; by default (`over:
  every`) a claim holds when it holds for every seed (`check_seeds`); with `over: {at_least:
  0.9}` when it holds for at least that share of the seeds (rounded up: 36 of 40), each seed
  checked as with `every`, and the count is on the result.
- `versus: {partner: NAME, KEY: {less_by: x, ...}}` states a claim against another config run
  with the same seeds, checked seed by seed (`check_versus`): `less_by` (partner − this ≥ x),
  `more_by` (this − partner ≥ x), `factor_min` (this / partner ≥ x), `factor_max`
  (this / partner ≤ x).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gradlab.config.checks import versus_specs
from gradlab.config.schema import RESERVED
from gradlab.record.group import field_stats

MISSING = object()  # what `lookup` returns for a key the summary does not have


@dataclass(frozen=True)
class Expectation:
    key: str
    wanted: Any
    measured: Any
    ok: bool
    seed: int | None = None  # the seed a group's claim failed at (None: a single run, or the mean)
    partner: str | None = None  # a paired claim's partner config
    theirs: Any = None  # the partner's value, for a paired claim
    held: int | None = None  # with `over: {at_least: x}`: the seeds it held for,
    of: int | None = None  # of this many,
    needed: int | None = None  # where this many were needed

    @property
    def missed_seeds(self) -> bool:
        """Held for its share of the seeds (`over: {at_least}`) while some seeds missed."""
        return self.ok and self.held is not None and self.held < (self.of or 0)

    def _count(self) -> str:
        if self.needed is None:
            return ""
        return f", held for {self.held} of {self.of} seeds ({self.needed} needed)"

    def describe(self) -> str:
        """`grad_ratio_init: expected ≤ 1e-06, measured 0.52 (seed 2)`"""
        measured = "missing" if self.measured is MISSING else _show(self.measured)
        at = f" (seed {self.seed})" if self.seed is not None else ""
        if self.partner is None:
            return (f"{self.key}: expected {describe_wanted(self.wanted)}, measured {measured}"
                    f"{at}{self._count()}")
        theirs = "missing" if self.theirs is MISSING else _show(self.theirs)
        return (f"versus {self.partner}: {self.key}: expected {describe_paired(self.wanted)}, "
                f"measured {measured} against {theirs}{_difference(self.measured, self.theirs)}"
                f"{at}{self._count()}")


def _difference(mine: Any, theirs: Any) -> str:
    """`: 0.274 lower, 0.73×` — how the two values differ, where both are numbers."""
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (mine, theirs)):
        return ""
    diff = mine - theirs
    text = f": {_show(abs(diff))} {'lower' if diff < 0 else 'higher'}"
    if theirs != 0:
        text += f", {_show(mine / theirs)}×"
    return text


def describe_paired(wanted: dict[str, Any]) -> str:
    words = {"less_by": "≥ {} below the partner's", "more_by": "≥ {} above the partner's",
             "factor_min": "≥ {}× the partner's", "factor_max": "≤ {}× the partner's"}
    return " and ".join(words[k].format(_show(v)) for k, v in wanted.items())


def describe_wanted(wanted: Any) -> str:
    if isinstance(wanted, dict):
        lo, hi = wanted.get("min"), wanted.get("max")
        if lo is not None and hi is not None:
            return f"between {_show(lo)} and {_show(hi)}"
        return f"≥ {_show(lo)}" if lo is not None else f"≤ {_show(hi)}"
    return _show(wanted)


def _show(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3g}"
    return str(x) if not isinstance(x, str) else x


def lookup(summary: dict[str, Any], key: str) -> Any:
    """The value at a dotted key path, or a missing marker."""
    node: Any = summary
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return MISSING
    return node


def holds(wanted: Any, measured: Any) -> bool:
    if measured is MISSING:
        return False
    if isinstance(wanted, dict):
        if isinstance(measured, bool) or not isinstance(measured, (int, float)):
            return False
        lo, hi = wanted.get("min"), wanted.get("max")
        return (lo is None or measured >= lo) and (hi is None or measured <= hi)
    return bool(measured == wanted)


def own_claims(expect: dict[str, Any]) -> dict[str, Any]:
    """The claims about a config's own summary (without `over` and `versus`)."""
    return {k: v for k, v in expect.items() if k not in RESERVED}


def check(expect: dict[str, Any], summary: dict[str, Any] | None) -> list[Expectation]:
    """Every expectation with what was measured; a run with no summary fails them all."""
    summary = summary or {}
    results = []
    for key, wanted in own_claims(expect).items():
        measured = lookup(summary, key)
        results.append(Expectation(key, wanted, measured, holds(wanted, measured)))
    return results


def mean_of(summaries: dict[int, dict[str, Any] | None], key: str) -> Any:
    """The mean over seeds of a numeric field as the group record takes it (geometric for
    gradient ratios and norms: `record.group.field_stats`), or missing when a seed lacks it."""
    values = [lookup(s or {}, key) for s in summaries.values()]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return MISSING
    return field_stats([float(v) for v in values], key).get("mean", MISSING)


def over_rule(expect: dict[str, Any]) -> str:
    """How an `expect:` block is checked over a group's seeds, in words."""
    over = expect.get("over", "every")
    if isinstance(over, dict):
        return f"at least {over['at_least']:.0%} of the seeds"
    return "the mean over the seeds" if over == "mean" else "every seed"


def needed_seeds(expect: dict[str, Any], seeds: int) -> int:
    """How many of `seeds` a claim must hold for: all, or with `over: {at_least: x}` the share
    x of them rounded up (never fewer than one)."""
    over = expect.get("over")
    if not isinstance(over, dict):
        return seeds
    return max(1, math.ceil(float(over["at_least"]) * seeds - 1e-9))


def _seed_by_seed(key: str, wanted: Any, expect: dict[str, Any], seeds: list[int],
                  fails: Callable[[int], tuple[Any, Any] | None],
                  partner: str | None = None) -> Expectation:
    """A claim checked on each seed: `fails(seed)` is None where it holds, else the values
    (mine, theirs) it failed with. The first failing seed is named; with `over: {at_least}`
    every seed is checked and the count decides."""
    counting = isinstance(expect.get("over"), dict)
    first: tuple[int, Any] | None = None
    held = 0
    for seed in seeds:
        failure = fails(seed)
        if failure is None:
            held += 1
            continue
        if first is None:
            first = (seed, failure)
        if not counting:
            break
    need = needed_seeds(expect, len(seeds))
    count = {"held": held, "of": len(seeds), "needed": need} if counting else {}
    if first is None:
        return Expectation(key, wanted, None, True, partner=partner, **count)
    seed, (mine, theirs) = first
    return Expectation(key, wanted, mine, counting and held >= need, seed=seed, partner=partner,
                       theirs=theirs, **count)


def check_seeds(expect: dict[str, Any],
                summaries: dict[int, dict[str, Any] | None]) -> list[Expectation]:
    """A group's claims: one Expectation per key, holding when it holds for every seed (the
    first seed it fails at is named), or for the share `over: {at_least: x}` gives, or, with
    `over: mean`, a range checked on the mean over the seeds (a literal, such as `status`, is
    then checked seed by seed)."""
    over_mean = expect.get("over") == "mean"
    results = []
    for key, wanted in own_claims(expect).items():
        if over_mean and isinstance(wanted, dict):
            measured = mean_of(summaries, key)
            results.append(Expectation(key, wanted, measured, holds(wanted, measured)))
            continue

        def fails(seed: int, key: str = key, wanted: Any = wanted) -> tuple[Any, Any] | None:
            measured = lookup(summaries[seed] or {}, key)
            return None if holds(wanted, measured) else (measured, None)

        results.append(_seed_by_seed(key, wanted, expect, list(summaries), fails))
    return results


def paired_holds(wanted: dict[str, Any], mine: Any, theirs: Any) -> bool:
    numbers = [x for x in (mine, theirs)
               if isinstance(x, (int, float)) and not isinstance(x, bool)]
    if len(numbers) < 2 or any(math.isnan(x) for x in numbers):
        return False
    for how, bound in wanted.items():
        if how == "less_by" and not theirs - mine >= bound:
            return False
        if how == "more_by" and not mine - theirs >= bound:
            return False
        if how in ("factor_min", "factor_max"):
            if theirs == 0:
                ratio = math.inf if mine > 0 else math.nan
            else:
                ratio = mine / theirs
            if math.isnan(ratio) or (how == "factor_min" and not ratio >= bound) or \
                    (how == "factor_max" and not ratio <= bound):
                return False
    return True


def check_versus(expect: dict[str, Any], mine: dict[int, dict[str, Any] | None],
                 partners: dict[str, dict[int, dict[str, Any] | None]]) -> list[Expectation]:
    """The paired claims (`versus:`, one partner or a list), each seed by seed against its
    partner's run of the same seed (or on the means, with `over: mean`); a seed the partner
    lacks fails the claim, and so does a partner not in `partners` (by name)."""
    results = []
    for spec in versus_specs(expect):
        partner = str(spec.get("partner"))
        results += _paired(spec, partner, expect, mine, partners.get(partner, {}))
    return results


def _paired(spec: dict[str, Any], partner: str, expect: dict[str, Any],
            mine: dict[int, dict[str, Any] | None],
            theirs: dict[int, dict[str, Any] | None]) -> list[Expectation]:
    over_mean = expect.get("over") == "mean"
    results = []
    for key, wanted in spec.items():
        if key == "partner":
            continue
        if over_mean:
            a, b = mean_of(mine, key), mean_of(theirs, key)
            results.append(Expectation(key, wanted, a, paired_holds(wanted, a, b),
                                       partner=partner, theirs=b))
            continue

        def fails(seed: int, key: str = key, wanted: Any = wanted) -> tuple[Any, Any] | None:
            a = lookup(mine[seed] or {}, key)
            b = lookup(theirs[seed] or {}, key) if seed in theirs else MISSING
            return None if paired_holds(wanted, a, b) else (a, b)

        results.append(_seed_by_seed(key, wanted, expect, list(mine), fails, partner))
    return results
