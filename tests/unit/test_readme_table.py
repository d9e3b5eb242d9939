"""The README's performance table is made from the benchmark report, never typed: its block
is exactly what ``benchmarks/readme_table.py`` renders from the committed report, and a
benchmark that failed or left out a figure shows as failed."""

from __future__ import annotations

import copy
import json

import pytest

from tests.bench_support import BENCHMARKS, REPO, benchmark_module


@pytest.fixture(scope="module")
def table():
    return benchmark_module("readme_table")


@pytest.fixture(scope="module")
def report_rows(table):
    return benchmark_module("report_rows")


def _quiet(quiet: bool) -> dict:
    return {"quiet": quiet, "others_cores_mean": 0.02 if quiet else 1.5, "load1_mean": 2.1}


def _report(report_rows) -> dict:
    """A small report as bench_report writes it: one step that worked, one that failed."""
    steps = [
        {"name": "local", "expected": ["seed start a/b", "flowrig --help"], "error": None, "quiet": _quiet(True),
         "figures": [
             {"figure": "seed start a/b", "value": 3.2, "unit": "s", "floor": 1.6, "ratio": 2.0, "target": "<= 2.0"},
             {"figure": "flowrig --help", "value": 0.61, "unit": "s", "floor": None, "ratio": None, "target": "< 0.5"},
             {"figure": "phase only", "value": 1.0, "unit": "s", "floor": None, "ratio": None, "target": None},
         ]},
        {"name": "docker", "expected": ["docker n=1000"], "error": "exit 1: image flowrig-x not found",
         "quiet": _quiet(False), "figures": []},
    ]
    return {"profile": "quick", "date": "2026-12-07", "commit": "abc123def456", "dirty": False, "seconds": 600,
            "machine": {"cores": 2, "memory_gib": 23.5, "python": "3.11.7"}, "quiet": False,
            "load": {"whole": {"others_cores_mean": 1.5, "load1_mean": 6.0}}, "steps": steps,
            "rows": report_rows.rows(steps)}


def test_readme_block_is_what_the_committed_report_renders(table):
    readme = (REPO / "README.md").read_text()
    report = json.loads((BENCHMARKS / "results" / "report.json").read_text())
    start, end = table.block(readme)
    assert readme[start:end] == table.render(report)
    assert table.main(["--check"]) == 0
    # Every acceptance line the report owes is in the README, each with its verdict.
    lines = table.acceptance(report["rows"])
    assert {row["step"] for row in lines} == {step["name"] for step in report["steps"]}
    for row in lines:
        assert f"| {row['figure']} | " in readme[start:end]


def test_render_rows_heading_and_failures(table, report_rows):
    text = table.render(_report(report_rows))
    lines = text.splitlines()
    assert lines[0] == table.NOTICE
    assert "on 2026-12-07 at commit `abc123def456`" in lines[1] and "--profile quick" in lines[1]
    assert "2 cores, 23.5 GiB, Python 3.11.7" in lines[1] and "**The machine was not quiet**" in lines[1]
    assert "| figure | flowrig | floor | ratio | target | holds | quiet |" in lines
    assert "| seed start a/b | 3.2 s | 1.6 s | 2.00 | <= 2.0 | yes | yes |" in lines
    # No floor: the target is on the value.
    assert "| flowrig --help | 0.61 s | - | - | < 0.5 | NO | yes |" in lines
    # A failed benchmark keeps its line, marked failed, with the reason under the table.
    assert "| docker n=1000 | - | - | - | - | failed | no |" in lines
    assert "- `docker` failed: exit 1: image flowrig-x not found" in lines
    # A figure with neither target nor expectation is the report's, not the table's.
    assert "phase only" not in text


def test_missing_figure_or_value_is_failed_not_dropped(report_rows):
    step = {"name": "scale", "expected": ["wait n=5000 whole run", "map-chain n=5000 whole run"], "error": None,
            "quiet": _quiet(True),
            "figures": [{"figure": "wait n=5000 whole run", "value": None, "unit": "s", "floor": 2.0,
                         "target": "<= 2.0"}]}
    rows = report_rows.rows([step])
    assert [(row["figure"], row["holds"]) for row in rows] == [
        ("wait n=5000 whole run", "failed"), ("map-chain n=5000 whole run", "failed")]
    assert rows[1]["error"] == "not written by the benchmark"


def test_a_failed_step_fails_the_figures_it_wrote(report_rows):
    # A benchmark that wrote its figures and then exited non-zero (a simulation side that
    # broke) cannot be trusted for any of them.
    step = {"name": "fargate", "expected": ["calls"], "error": "exit 1: simulation failed", "quiet": _quiet(True),
            "figures": [{"figure": "calls", "value": 1.2, "unit": "calls/worker", "floor": None, "target": "<= 2"}]}
    assert report_rows.rows([step])[0]["holds"] == "failed"


@pytest.mark.parametrize(("target", "value", "floor", "verdict"), [
    ("<= 2.0", 4.0, 2.0, "yes"), ("<= 2.0", 4.1, 2.0, "NO"), ("< 0.5", 0.5, None, "NO"), (">= 1", 1.0, None, "yes"),
    ("~10", 12.0, None, "-"), (None, 1.0, 1.0, "-"), ("<= 1.3", 1.0, 0.0, "yes"),
])
def test_holds(report_rows, target, value, floor, verdict):
    assert report_rows.holds(target, value, floor) == verdict


def test_check_and_write(table, report_rows, tmp_path):
    report = _report(report_rows)
    (tmp_path / "report.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{table.BEGIN}\n| stale | row |\n{table.END}\n\nafter\n")
    argv = ["--report", str(tmp_path / "report.json"), "--readme", str(readme)]
    assert table.main([*argv, "--check"]) == 1
    assert "stale" in readme.read_text()  # --check changes nothing
    assert table.main(argv) == 0
    text = readme.read_text()
    assert text.startswith(f"# x\n\n{table.BEGIN}\n{table.NOTICE}\n") and text.endswith(f"{table.END}\n\nafter\n")
    assert table.main([*argv, "--check"]) == 0
    # A newer report makes the README stale again.
    newer = copy.deepcopy(report)
    newer["commit"] = "fedcba987654"
    (tmp_path / "report.json").write_text(json.dumps(newer))
    assert table.main([*argv, "--check"]) == 1


def test_markers_missing(table, report_rows, tmp_path, capsys):
    (tmp_path / "report.json").write_text(json.dumps(_report(report_rows)))
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{table.END}\n{table.BEGIN}\n")
    assert table.main(["--report", str(tmp_path / "report.json"), "--readme", str(readme)]) == 2
    assert "needs exactly one" in capsys.readouterr().err
    assert readme.read_text() == f"# x\n{table.END}\n{table.BEGIN}\n"


def test_patterns_fold_into_their_worst_per_line(table, report_rows):
    figure = {"unit": "s", "target": "<= 2.0"}
    steps = [{"name": "scale", "error": None, "quiet": _quiet(True),
              "expected": ["wait n=5000 whole run", "map-chain n=5000 whole run", "wait own slope 1000->5000",
                           "map-chain own slope 1000->5000"],
              "figures": [{**figure, "figure": "wait n=5000 whole run", "value": 9.0, "floor": 4.0},
                          {**figure, "figure": "map-chain n=5000 whole run", "value": 7.0, "floor": 4.0},
                          {**figure, "figure": "wait own slope 1000->5000", "value": 0.4, "floor": None,
                           "unit": "ms/task", "target": "<= 1.0"}]}]
    rows = table.acceptance(report_rows.rows(steps))
    assert [(row["figure"], row["value"], row["holds"]) for row in rows] == [
        ("n=5000 whole run: worst of 2 patterns (wait)", 9.0, "NO"),
        # map-chain's slope is missing: the line is failed, showing the worst that was measured.
        ("own slope 1000->5000: worst of 2 patterns (wait)", 0.4, "failed"),
    ]
    assert rows[1]["error"] == "not written by the benchmark"
    # Nothing measured at all: failed, naming no pattern as the worst.
    steps[0]["error"], steps[0]["figures"] = "timed out after 2400 s", []
    assert [(row["figure"], row["holds"]) for row in table.acceptance(report_rows.rows(steps))] == [
        ("n=5000 whole run: worst of 2 patterns", "failed"), ("own slope 1000->5000: worst of 2 patterns", "failed")]
