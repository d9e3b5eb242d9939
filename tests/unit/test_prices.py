"""The price table flowrig ships, a project's own merged over it, and every way a price
file is refused: one line naming the key, exit 2, no value of the file echoed."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from flowrig.backends.prices import MAX_BYTES, load_prices, merged, shipped_table
from flowrig.backends.usage import LOCAL, SPOT, Placement
from flowrig.errors import EXIT_BAD_INPUT, BadInput
from flowrig.project import load_project
from tests.run_support import invoke

X86 = Placement(vcpu=1.0, memory_gib=4.0, price_key="fargate:us-east-1:X86_64")
ARM = Placement(vcpu=1.0, memory_gib=4.0, price_key="fargate:us-east-1:ARM64")


def test_the_shipped_table_is_dated_names_its_source_and_prices_fargate_by_architecture():
    table = shipped_table()
    assert table.date and table.source and "aws.amazon.com" in table.source
    assert table.label == f"aws prices of {table.date}"
    rates = table.fargate["us-east-1"]
    assert rates.source and rates.vcpu_hour and rates.gb_hour
    cost, _ = table.cost(X86, 3600)
    assert cost == pytest.approx(rates.vcpu_hour + 4 * rates.gb_hour)
    arm, _ = table.cost(ARM, 3600)
    assert arm == pytest.approx(rates.arm_vcpu_hour + 4 * rates.arm_gb_hour) and arm < cost


def test_what_the_shipped_table_does_not_know_is_no_price_with_the_reason():
    table = shipped_table()
    assert table.cost(Placement(market=SPOT, vcpu=1, memory_gib=2, price_key="fargate:us-east-1:X86_64"), 60) == (
        None, f"no Spot price for fargate:us-east-1:X86_64 in {table.label}")
    assert table.cost(Placement(vcpu=2, price_key="ec2:us-east-1:m7i.large"), 60)[0] is None
    assert table.cost(Placement(vcpu=2, price_key="fargate:mars-1:X86_64"), 60)[0] is None
    assert table.cost(Placement(vcpu=2), 60) == (None, f"no price for this shape in {table.label}")
    assert table.cost(Placement(market=LOCAL, vcpu=2), 60) == (None, LOCAL)


def _project(tmp_path: Path, prices: str | None = None, text: str | None = None) -> Path:
    lines = ['flow = "flow.py:f"']
    if prices is not None:
        lines += ["[run]", f'prices = "{prices}"']
    (tmp_path / "flowrig.toml").write_text("\n".join(lines) + "\n")
    (tmp_path / "flow.py").write_text("from prefect import flow\n\n@flow\ndef f() -> int:\n    return 1\n")
    if text is not None:
        (tmp_path / (prices or "prices.toml")).write_text(text)
    return tmp_path


OWN = """
date = "2026-11-30"
[fargate.us-east-1]
spot_factor = 0.3
vcpu_hour = 0.05
[fargate.eu-west-1]
vcpu_hour = 0.044
gb_hour = 0.0049
[ec2.us-east-1]
types = { "m7i.large" = 0.1 }
"""


def test_a_project_file_is_merged_over_the_shipped_table_key_by_key(tmp_path):
    root = _project(tmp_path, "prices.toml", OWN)
    project = load_project(root)
    assert project.run.prices == "prices.toml"
    table = load_prices(project.root, project.run.prices)
    shipped = shipped_table().fargate["us-east-1"]
    rates = table.fargate["us-east-1"]
    assert rates.vcpu_hour == 0.05  # the project's figure
    assert rates.gb_hour == shipped.gb_hour and rates.arm_vcpu_hour == shipped.arm_vcpu_hour  # the rest kept
    assert table.date == "2026-11-30" and table.label == f"prices.toml over {shipped_table().label}"
    spot = Placement(market=SPOT, vcpu=1, memory_gib=2, price_key="fargate:us-east-1:X86_64")
    assert table.cost(spot, 3600)[0] == pytest.approx(0.3 * (0.05 + 2 * shipped.gb_hour))
    assert table.cost(Placement(vcpu=1, memory_gib=1, price_key="fargate:eu-west-1:X86_64"), 3600)[0] == \
        pytest.approx(0.044 + 0.0049)
    assert table.cost(Placement(vcpu=2, price_key="ec2:us-east-1:m7i.large"), 1800)[0] == pytest.approx(0.05)
    assert table.cost(Placement(market=SPOT, vcpu=2, price_key="ec2:us-east-1:m7i.large"), 1800)[0] is None


def test_no_file_is_the_shipped_table():
    assert load_prices(Path("/nonexistent"), None) is shipped_table()


def test_merging_replaces_values_and_merges_tables():
    assert merged({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "b": {"z": 1}}) == {"a": {"x": 1, "y": 3},
                                                                                      "b": {"z": 1}}


@pytest.mark.parametrize("text, message", [
    ("[fargate.us-east-1]\nvcpu_hours = 0.04\n",
     "[run] prices 'prices.toml': unknown key 'fargate.us-east-1.vcpu_hours'; a price file has date, currency, "
     "source, [fargate.REGION] and [ec2.REGION] tables"),
    ("[fargate.us-east-1]\nvcpu_hour = -0.04\n",
     "[run] prices 'prices.toml': 'fargate.us-east-1.vcpu_hour' must be a price greater than 0"),
    ("[fargate.us-east-1]\nspot_factor = 1.5\n",
     "[run] prices 'prices.toml': 'fargate.us-east-1.spot_factor' must be a share between 0 and 1"),
    ("[fargate.us-east-1]\nvcpu_hour = nan\n",
     "[run] prices 'prices.toml': 'fargate.us-east-1.vcpu_hour' must be a price greater than 0"),
    ('[ec2.us-east-1]\ntypes = { "m7i.large" = "AKIAIOSFODNN7EXAMPLE" }\n',
     "[run] prices 'prices.toml': 'ec2.us-east-1.types.m7i.large' must be a number (got str)"),
    ("fargate = 3\n", "[run] prices 'prices.toml': 'fargate' must be a table (got int)"),
    ("currency = 1\n", "[run] prices 'prices.toml': 'currency' must be a string (got int)"),
    ("[fargate.us-east-1\n", None),
])
def test_a_bad_price_file_is_one_line_naming_the_key_and_never_its_value(tmp_path, text, message):
    root = _project(tmp_path, "prices.toml", text)
    with pytest.raises(BadInput) as caught:
        load_prices(root, "prices.toml")
    assert caught.value.exit_code == EXIT_BAD_INPUT and "\n" not in str(caught.value)
    if message is None:
        assert str(caught.value).startswith("[run] prices 'prices.toml': not valid TOML")
    else:
        assert str(caught.value) == message
    assert "AKIA" not in str(caught.value)


def test_a_price_file_outside_the_project_is_refused_also_through_a_link(tmp_path):
    root = tmp_path / "project"
    root.mkdir()
    (tmp_path / "secret.toml").write_text('[ec2.us-east-1]\ntypes = { "x" = "hunter2" }\n')
    for name in ("../secret.toml", str(tmp_path / "secret.toml")):
        with pytest.raises(BadInput, match="must be inside the project directory"):
            load_prices(root, name)
    os.symlink(tmp_path / "secret.toml", root / "prices.toml")
    with pytest.raises(BadInput, match="must be inside the project directory"):
        load_prices(root, "prices.toml")


def test_a_missing_or_huge_price_file_is_refused(tmp_path):
    with pytest.raises(BadInput, match="no such file in the project directory"):
        load_prices(tmp_path, "prices.toml")
    (tmp_path / "prices.toml").write_text("# " + "x" * MAX_BYTES + "\n")
    with pytest.raises(BadInput, match="larger than 256 KB"):
        load_prices(tmp_path, "prices.toml")


def test_the_project_file_takes_prices_as_a_string_only(tmp_path):
    (tmp_path / "flowrig.toml").write_text('flow = "flow.py:f"\n[run]\nprices = 3\n')
    with pytest.raises(BadInput, match=r"'run.prices' must be"):
        load_project(tmp_path)


def test_a_run_with_a_bad_price_file_is_bad_input_before_anything_starts(tmp_path):
    root = _project(tmp_path, "prices.toml", "[fargate.us-east-1]\nvcpu_hour = -1\n")
    (root / "flow.py").write_text("raise SystemExit('the flow must not even be imported')\n")
    done = invoke("run", str(root), "--output", "json")
    assert done.returncode == 2, done.stderr
    message = "[run] prices 'prices.toml': 'fargate.us-east-1.vcpu_hour' must be a price greater than 0"
    assert message in done.stderr and "Traceback" not in done.stderr
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert (outcome["state"], outcome["error"], outcome["usage"]) == ("BadInput", message, None)
