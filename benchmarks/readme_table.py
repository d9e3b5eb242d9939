"""The README's performance table, made from ``benchmarks/results/report.json``.

Renders the report that ``bench_report.py`` wrote into README.md between
``<!-- performance:begin -->`` and ``<!-- performance:end -->``: one row per acceptance
line (flowrig's value, its floor, the ratio, the target, whether it holds, whether the
machine was quiet; the many-task patterns folded into their worst per line), under a
line naming the profile, the date, the commit and the machine. The table is never
typed: run the report again, then this.

    python benchmarks/readme_table.py [--report benchmarks/results/report.json] [--readme README.md] [--check]

``--check`` changes nothing and exits 1 when the README's block is not what the report
renders (2 when the markers or the report are missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from report_rows import COLUMNS, cells

HERE = Path(__file__).resolve().parent
BEGIN, END = "<!-- performance:begin -->", "<!-- performance:end -->"
NOTICE = "<!-- Made by benchmarks/readme_table.py from benchmarks/results/report.json; do not edit by hand. -->"


class MarkersMissing(ValueError):
    """The README has no (or a broken) performance block."""


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def heading(report: dict) -> str:
    """Who measured what, where, and how quiet it was."""
    m = report["machine"]
    command = "python benchmarks/bench_report.py --profile " + report["profile"].split(",")[0]
    dirty = " plus uncommitted changes" if report.get("dirty") else ""
    line = (f"Measured by `{command}` on {report['date']} at commit `{report['commit']}`{dirty}, on "
            f"{m['cores']} cores, {m['memory_gib']:g} GiB, Python {m['python']} ({report['profile']} profile, "
            f"{report['seconds'] / 60:.0f} min).")
    whole = report["load"]["whole"]
    if report["quiet"]:
        return line + f" The machine was quiet (other processes: {whole['others_cores_mean']:.2f} cores on average)."
    return line + (f" **The machine was not quiet** (other processes used {whole.get('others_cores_mean', 0):.2f} "
                   f"of {m['cores']} cores on average, load average {whole.get('load1_mean', 0):.1f}): "
                   "these are loaded figures, not a measure of flowrig.")


def _measured(row: dict) -> float:
    return row["ratio"] if row["ratio"] is not None else row["value"]


def acceptance(rows: list[dict]) -> list[dict]:
    """One row per acceptance line: the many-task patterns' rows folded into their worst
    per line (``n=5000 whole run: worst of 8 patterns (map-chain)``); a line holds when
    every pattern's does, and is failed when any pattern's failed."""
    out, lines = [], {}
    for row in rows:
        pattern, _, line = row["figure"].partition(" ")
        if row["step"] != "scale" or not line:
            out.append(row)
            continue
        if line not in lines:
            lines[line] = []
            out.append({"line": line})  # its place, filled below
        lines[line].append((pattern, row))
    for i, row in enumerate(out):
        if "line" not in row:
            continue
        found = lines[row["line"]]
        measured = [(pattern, r) for pattern, r in found if r["value"] is not None]
        pattern, worst = max(measured, key=lambda pr: _measured(pr[1])) if measured else found[0]
        verdicts = {r["holds"] for _, r in found}
        holds = next((v for v in ("failed", "NO", "-") if v in verdicts), "yes")
        named = f" ({pattern})" if measured else ""  # none measured: no pattern is the worst
        out[i] = {**worst, "figure": f"{row['line']}: worst of {len(found)} patterns{named}",
                  "holds": holds, "quiet": all(r["quiet"] for _, r in found),
                  "error": "; ".join(sorted({r["error"] for _, r in found if r["error"]}))}
    return out


def render(report: dict) -> str:
    """The block's lines between the markers (the markers excluded), ending in a newline."""
    lines = [NOTICE, heading(report), "", "| " + " | ".join(COLUMNS) + " |",
             "|---|---:|---:|---:|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in cells(row)) + " |" for row in acceptance(report["rows"])]
    failed = sorted({(row["step"], row["error"]) for row in report["rows"] if row["holds"] == "failed"})
    if failed:
        lines += [""] + [f"- `{step}` failed: {_cell(error)}" for step, error in failed]
    return "\n".join(lines) + "\n"


def block(readme: str) -> tuple[int, int]:
    """Where the block's content starts and ends in ``readme``."""
    if readme.count(BEGIN) != 1 or readme.count(END) != 1 or readme.index(BEGIN) > readme.index(END):
        raise MarkersMissing(f"README needs exactly one {BEGIN} ... {END} block")
    start = readme.index(BEGIN) + len(BEGIN) + 1
    return start, readme.index(END)


def replaced(readme: str, content: str) -> str:
    """``readme`` with its block's content replaced by ``content``."""
    start, end = block(readme)
    return readme[:start] + content + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", type=Path, default=HERE / "results" / "report.json")
    parser.add_argument("--readme", type=Path, default=HERE.parent / "README.md")
    parser.add_argument("--check", action="store_true", help="exit 1 when the README differs; change nothing")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        readme = args.readme.read_text()
        updated = replaced(readme, render(report))
    except (OSError, ValueError) as problem:
        print(f"readme_table: {problem}", file=sys.stderr)
        return 2
    except KeyError as problem:
        print(f"readme_table: {args.report} lacks {problem}: write it with benchmarks/bench_report.py",
              file=sys.stderr)
        return 2
    if args.check:
        if updated != readme:
            print(f"readme_table: {args.readme}'s performance table is not what {args.report} renders: "
                  f"run python benchmarks/readme_table.py", file=sys.stderr)
            return 1
        return 0
    args.readme.write_text(updated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
