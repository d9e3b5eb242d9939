"""Run parameters: ``--param`` parsing, the precedence of their sources, and validation
against a real Prefect flow's signature."""

from __future__ import annotations

import json
import re

import pytest

from flowrig.errors import BadInput
from flowrig.project.parameters import ENV_VAR, gather, hidden_values, parse_param, validate


@pytest.fixture(scope="module")
def typed_flow():
    from prefect import flow

    @flow(name="typed")
    def typed(n: int, xs: list[int], label: str = "none", ratio: float = 0.5) -> int:
        return n

    return typed


@pytest.fixture(scope="module")
def no_param_flow():
    from prefect import flow

    @flow(name="bare")
    def bare() -> int:
        return 1

    return bare


# --- parse_param ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "expected"),
    [
        ("x=[1,2,3]", ("x", [1, 2, 3])),
        ("x=3", ("x", 3)),
        ("x=2.5", ("x", 2.5)),
        ("x=true", ("x", True)),
        ("x=null", ("x", None)),
        ('x={"a": [1]}', ("x", {"a": [1]})),
        ('x="007"', ("x", "007")),
        ("x=hello", ("x", "hello")),
        ("x=hello world", ("x", "hello world")),
        ("x=", ("x", "")),
        ("x=a=b", ("x", "a=b")),
        (" x =7", ("x", 7)),
    ],
)
def test_parse_param_json_then_string(item, expected):
    assert parse_param(item) == expected


@pytest.mark.parametrize("item", ["x=[1,2", "x={'a': 1}", 'x="open', "x= [1,"])
def test_malformed_json_that_looks_like_json_is_an_error(item):
    with pytest.raises(BadInput) as info:
        parse_param(item)
    message = str(info.value)
    assert "--param x" in message and "malformed JSON" in message
    assert "\n" not in message


@pytest.mark.parametrize("item", ["x", "=3", "  =3", ""])
def test_param_without_key_or_equals(item):
    with pytest.raises(BadInput, match="must look like key=value"):
        parse_param(item)


# --- gather -----------------------------------------------------------------------------


def test_gather_precedence_env_then_file_then_param(tmp_path):
    file = tmp_path / "params.json"
    file.write_text(json.dumps({"a": "file", "b": "file", "c": "file"}))
    env = {ENV_VAR: json.dumps({"a": "env", "b": "env", "c": "env", "d": "env"})}
    got = gather(["c=param", "e=[1]"], params_file=file, environ=env)
    assert got == {"a": "file", "b": "file", "c": "param", "d": "env", "e": [1]}


def test_gather_later_param_wins():
    assert gather(["x=1", "x=2"], environ={}) == {"x": 2}


def test_gather_reads_process_environment_by_default(monkeypatch):
    monkeypatch.setenv(ENV_VAR, '{"from_env": 1}')
    assert gather([]) == {"from_env": 1}
    monkeypatch.setenv(ENV_VAR, "")
    assert gather([]) == {}


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"x"'])
def test_env_var_must_hold_an_object(text):
    with pytest.raises(BadInput) as info:
        gather([], environ={ENV_VAR: text})
    assert ENV_VAR in str(info.value) and "JSON object" in str(info.value)


def test_env_var_malformed_json():
    with pytest.raises(BadInput, match=f"{ENV_VAR}: malformed JSON"):
        gather([], environ={ENV_VAR: "{nope"})


def test_params_file_missing_or_not_an_object(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        gather([], params_file=tmp_path / "missing.json", environ={})
    listed = tmp_path / "list.json"
    listed.write_text("[1]")
    with pytest.raises(BadInput, match="must be a JSON object"):
        gather([], params_file=listed, environ={})
    broken = tmp_path / "broken.json"
    broken.write_text('{\n"a": 1,\n}')
    with pytest.raises(BadInput, match=r"malformed JSON .* at line 3"):
        gather([], params_file=str(broken), environ={})


# --- validate against a real flow -------------------------------------------------------


def test_params_file_dash_reads_standard_input_once(tmp_path):
    import io

    stdin = io.StringIO('{"n": 3, "label": "from stdin"}')
    got = gather(["label=cli"], "-", environ={ENV_VAR: '{"n": 1, "xs": [1]}'}, stdin=stdin)
    assert got == {"n": 3, "xs": [1], "label": "cli"}
    assert stdin.read() == ""  # read to its end, once
    with pytest.raises(BadInput, match="parameters on standard input: malformed JSON"):
        gather([], "-", environ={}, stdin=io.StringIO("{nope"))
    with pytest.raises(BadInput, match="parameters on standard input: must be a JSON object"):
        gather([], "-", environ={}, stdin=io.StringIO("[1, 2]"))


@pytest.mark.parametrize(
    "argv, shown",
    [
        ([b"run", b"p", b"--param", b"k=v"], [b"run", b"p", b"--param", b"k=*"]),
        ([b"run", b"-p", b"x=[1,2]", b"-v"], [b"run", b"-p", b"x=*", b"-v"]),
        ([b"run", b"--param=k=v=w"], [b"run", b"--param=k=*"]),
        ([b"run", b"-pk=v", b"-q"], [b"run", b"-pk=*", b"-q"]),
        ([b"run", b"--param", b"novalue"], [b"run", b"--param", b"*"]),
        ([b"run", b"--params-file", b"f.json", b"-b", b"local"], [b"run", b"--params-file", b"f.json", b"-b", b"local"]),
        ([b"run", b"--param", b"k=*"], [b"run", b"--param", b"k=*"]),
    ],
)
def test_hidden_values_keep_the_keys_and_nothing_of_the_values(argv, shown):
    assert hidden_values(argv) == shown


def test_validate_casts_and_fills_defaults(typed_flow):
    got = validate(typed_flow, {"n": "3", "xs": ["1", 2], "ratio": "2"})
    assert got == {"n": 3, "xs": [1, 2], "label": "none", "ratio": 2.0}
    assert type(got["n"]) is int and all(type(v) is int for v in got["xs"])


def test_validate_gathered_command_line_values(typed_flow):
    raw = gather(["n=4", "xs=[0,1,2]", "label=run 1"], environ={})
    assert validate(typed_flow, raw) == {"n": 4, "xs": [0, 1, 2], "label": "run 1", "ratio": 0.5}


def one_line_error(flow, parameters) -> str:
    with pytest.raises(BadInput) as info:
        validate(flow, parameters)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_parameter(typed_flow):
    message = one_line_error(typed_flow, {"n": 1, "xs": [], "nn": 2})
    assert "unknown parameter 'nn'" in message and "'typed'" in message
    assert "label, n, ratio, xs" in message


def test_unknown_parameter_for_flow_without_parameters(no_param_flow):
    assert "no parameters" in one_line_error(no_param_flow, {"x": 1})


def test_missing_required_parameter(typed_flow):
    message = one_line_error(typed_flow, {"xs": [1]})
    assert re.search(r"'typed': n: .*required", message, re.IGNORECASE), message


def test_wrong_type(typed_flow):
    message = one_line_error(typed_flow, {"n": "three", "xs": [1]})
    assert "'typed'" in message and "n:" in message and "integer" in message


def test_wrong_type_in_a_list(typed_flow):
    message = one_line_error(typed_flow, {"n": 1, "xs": "abc"})
    assert "xs" in message and "list" in message


def test_validation_leaves_prefect_flow_logger_as_it_was(typed_flow):
    import logging

    flow_logger = logging.getLogger("prefect.flows")
    assert flow_logger.disabled is False
    with pytest.raises(BadInput):
        validate(typed_flow, {"n": "x", "xs": []})
    assert flow_logger.disabled is False


@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity"])
def test_non_json_constants_stay_strings(raw):
    assert parse_param(f"name={raw}") == ("name", raw)
