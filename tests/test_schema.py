"""Tests for the typed settings' parsers, the wording of what a field accepts, and the Markdown table."""

from __future__ import annotations

from typing import Literal

import pytest
from pydantic import BaseModel
from pydantic_core import PydanticCustomError

from image_classifier import schema
from image_classifier.schema import Flag, Real, Whole, Word, setting


@pytest.mark.parametrize("parse, raw, expected", [
    (schema.parse_flag, " Yes ", True), (schema.parse_flag, "OFF", False), (schema.parse_flag, 1, True),
    (schema.parse_flag, False, False),
    (schema.parse_whole, "7", 7), (schema.parse_whole, " 7.0 ", 7), (schema.parse_whole, "3.2e1", 32),
    (schema.parse_whole, 2**62 + 1, 2**62 + 1), (schema.parse_whole, "-1", -1),
    (schema.parse_real, "1e-2", 0.01), (schema.parse_real, ".5", 0.5), (schema.parse_real, 3, 3.0),
    (schema.parse_word, " SGD ", "sgd"),
])
def test_parsers(parse, raw, expected):
    value = parse(raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("parse, raw", [
    (schema.parse_flag, "maybe"), (schema.parse_flag, ""), (schema.parse_flag, "2"),
    (schema.parse_whole, "3.5"), (schema.parse_whole, "inf"), (schema.parse_whole, "nan"), (schema.parse_whole, ""),
    (schema.parse_whole, True),
    (schema.parse_real, "inf"), (schema.parse_real, "NaN"), (schema.parse_real, "fast"), (schema.parse_real, False),
])
def test_parsers_refuse(parse, raw):
    with pytest.raises(PydanticCustomError) as info:
        parse(raw)
    assert info.value.type == schema.NOT_A


class Example(BaseModel):
    ratio: Real = setting(0.5, "A ratio.", unit="fraction", gt=0, le=1)
    count: Whole = setting(1, "A count | with a bar.", ge=1)
    mode: Literal["a", "b"] = setting("a", "A mode.")
    limit: Whole | None = setting(None, "A limit.", le=10)
    on: Flag = setting(True, "A switch.")
    name: Word = setting("", "A name.", accepts="a <name> or `<empty>`")


@pytest.mark.parametrize("field, accepts", [
    ("ratio", "a number in (0, 1]"), ("count", "a whole number >= 1"), ("mode", "one of a, b"),
    ("limit", "a whole number <= 10"), ("on", "true or false"), ("name", "a <name> or `<empty>`"),
])
def test_accepts(field, accepts):
    assert schema.accepts(Example.model_fields[field]) == accepts


def test_markdown_table():
    table = schema.markdown_table(Example, str.upper).splitlines()
    assert table[0] == "| name | type | default | accepts | unit | description |"
    assert table[2] == "| `RATIO` | float | `0.5` | a number in (0, 1] | fraction | A ratio. |"
    assert table[3] == "| `COUNT` | int | `1` | a whole number >= 1 |  | A count \\| with a bar. |"
    assert table[4] == "| `MODE` | choice | `a` | one of a, b |  | A mode. |"
    assert table[5] == "| `LIMIT` | int | unset | a whole number <= 10 |  | A limit. |"
    assert table[6] == "| `ON` | bool | `true` | true or false |  | A switch. |"
    assert table[7] == '| `NAME` | str | `""` | a &lt;name> or `<empty>` |  | A name. |'
