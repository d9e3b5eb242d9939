"""The figures a benchmark measured, for ``--json`` (the benchmarks' common output contract)."""

from __future__ import annotations

import json
from pathlib import Path


class Figures(list):
    """Every figure one benchmark run measured, in the order measured."""

    def add(self, name: str, value: float, unit: str, runs: list[float], floor: float | None = None,
            target: str | None = None, note: str = "") -> None:
        """One figure: its ``value``, the ``runs`` it summarises and its ``floor`` (the
        ratio is ``value / floor``)."""
        self.append({"figure": name, "value": round(value, 4), "unit": unit, "floor": floor,
                     "ratio": round(value / floor, 4) if floor else None, "target": target,
                     "runs": [round(r, 4) for r in runs], "note": note})

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self, indent=1) + "\n")
