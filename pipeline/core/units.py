"""Units and the way figures are written for people: one GIB, one way to print dollars and hours."""
from __future__ import annotations

GIB = 2**30


def fmt(value: float | None, unit: str) -> str:
    """Human figures: small runs (the demo) in seconds and fractions of a cent, long ones in days."""
    if value is None:
        return "-"
    if unit == "$":
        return f"${value:,.2f}" if value >= 0.01 or value == 0 else "<$0.01"
    if unit == "h":
        if value < 1 / 60:
            return f"{value * 3600:.0f} s"
        if value < 1:
            return f"{value * 60:.0f} min"
        return f"{value:,.1f} h" if value < 100 else f"{value:,.0f} h ({value / 24:,.1f} days)"
    if unit == "GiB":
        return f"{value / GIB:.2f} GiB"
    return f"{num(value)} {unit}"



def num(value: float) -> str:
    if 0 < value < 0.001:
        return "<0.001"
    return f"{value:,.2f}" if value >= 10 else f"{value:.3g}"
