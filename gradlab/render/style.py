"""How numbers and statuses look in every report: compact numbers, percentages, colours.

Shared by the run report, the run listing and the comparison table. No torch.
"""

from __future__ import annotations

import math
import re
from typing import Any

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "green"}
# A status's colour in every table: finished well, broke, or neither (interrupted, killed).
STATUS_STYLE = {"completed": "green", "diverged": "red", "failed": "red", "invalid": "red",
                "corrupt": "red"}


def status_style(status: str) -> str:
    return STATUS_STYLE.get(status, "yellow")


def num(x: Any, digits: int = 3) -> str:
    """A compact number: 0, 0.123, 12.3, 1.2e-05; a dash for missing."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if x == 0:
        return "0"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if isinstance(x, int) and abs(x) < 1e5:
        return str(x)  # a step count: 1000, not 1e+03
    if abs(x) < 1e-3 or abs(x) >= 1e5:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{digits}g}"


def pct(x: Any) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"



def short(x: float | None) -> str:
    """Two significant digits with a compact exponent (2.6e4, 4.6e-11): a narrow column."""
    return re.sub(r"e([+-])0*(\d)", lambda m: "e" + m[1].strip("+") + m[2], num(x, 2))


def finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
