"""The report's rows from what each benchmark wrote, and how a figure is shown: shared by
``bench_report.py`` (the console table) and ``readme_table.py`` (the README's table).

Pure functions of JSON-shaped data: nothing here runs or reads anything."""

from __future__ import annotations

import operator
import re

COLUMNS = ("figure", "flowrig", "floor", "ratio", "target", "holds", "quiet")
_COMPARE = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}
_TARGET = re.compile(r"^\s*(<=|<|>=|>)\s*([0-9]+(?:\.[0-9]+)?)\s*$")


def holds(target: str | None, value: float | None, floor: float | None) -> str:
    """``yes``/``NO`` for a target such as ``<= 2.0`` (on the ratio when there is a floor,
    on the value otherwise), ``-`` when there is no target this can judge (``~10``)."""
    found = _TARGET.match(target or "")
    if not found or value is None:
        return "-"
    measured = value / floor if floor else value
    return "yes" if _COMPARE[found[1]](measured, float(found[2])) else "NO"


def rows(steps: list[dict]) -> list[dict]:
    """One row per expected figure of every step, then any other figure with a target.

    A step that failed (non-zero exit, no JSON) marks every one of its rows ``failed``;
    an expected figure the step did not write, or wrote without a value, is ``failed`` too:
    a benchmark that broke shows in the table, never by its absence."""
    out = []
    for step in steps:
        found = {figure["figure"]: figure for figure in step.get("figures") or []}
        names = list(step["expected"]) + [name for name, figure in found.items()
                                         if figure.get("target") and name not in step["expected"]]
        for name in names:
            figure = found.get(name)
            value = figure.get("value") if figure else None
            floor = figure.get("floor") if figure else None
            target = figure.get("target") if figure else None
            verdict = holds(target, value, floor)
            if step.get("error") or value is None:
                verdict = "failed"
            out.append({
                "figure": name, "step": step["name"], "value": value, "unit": figure.get("unit") if figure else None,
                "floor": floor, "ratio": round(value / floor, 3) if value is not None and floor else None,
                "target": target, "holds": verdict, "quiet": step["quiet"]["quiet"],
                "error": step.get("error") or ("" if figure else "not written by the benchmark"),
            })
    return out


def number(value: float | None, unit: str | None) -> str:
    """A figure as the table shows it: three significant digits, with its unit."""
    if value is None:
        return "-"
    if unit == "USD":
        return f"${value:.3g}"
    text = f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return f"{text} {unit}" if unit else text


def cells(row: dict) -> tuple[str, ...]:
    """The row's cells, in :data:`COLUMNS` order."""
    ratio = f"{row['ratio']:.2f}" if row["ratio"] is not None else "-"
    return (row["figure"], number(row["value"], row["unit"]), number(row["floor"], row["unit"]), ratio,
            row["target"] or "-", row["holds"], "yes" if row["quiet"] else "no")


def console_table(table: list[dict]) -> str:
    """The rows as fixed-width text, failures' reasons under the table."""
    lines = [COLUMNS] + [cells(row) for row in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    text = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in lines]
    text.insert(1, "  ".join("-" * width for width in widths))
    failed = {(row["step"], row["error"]) for row in table if row["holds"] == "failed" and row["error"]}
    text += [f"{step}: {error}" for step, error in sorted(failed)]
    return "\n".join(text)
