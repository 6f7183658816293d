"""Typed settings: how a text value becomes a bool, int, float or word, and what each field accepts.

Shared by the two configuration schemas, `training.config.TrainConfig` (hyperparameters) and
`sagemaker_env.ServerSettings` (the model server's environment variables). Both arrive as text
(SageMaker passes hyperparameters "always as strings", the environment is text), so each field
is annotated with one of the types below, whose parser turns the text into the value; pydantic
then checks the field's range (`ge`, `lt`, ...) or choices (`Literal`). `accepts` words a field's
type and range for error messages, and `markdown_table` for the generated reference pages, so the
range is written once, in the schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
from pydantic import BaseModel, BeforeValidator, Field
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

TRUE_WORDS = frozenset({"true", "1", "yes", "on"})    # how a boolean setting is written
FALSE_WORDS = frozenset({"false", "0", "no", "off"})
NOT_A = "not_a"  # the pydantic error type of a value that is not text of the field's type


def _not_a(kind: str) -> PydanticCustomError:
    return PydanticCustomError(NOT_A, "not {kind}", {"kind": kind})


def parse_flag(value: Any) -> bool:
    """`True`/`False`, or one of TRUE_WORDS / FALSE_WORDS in any case and spacing.

    Raises:
        PydanticCustomError: of type NOT_A, for any other value.
    """
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in TRUE_WORDS or text in FALSE_WORDS:
        return text in TRUE_WORDS
    raise _not_a("true or false")


def parse_whole(value: Any) -> int:
    """A whole number, also written as a float (`"32.0"`, `"3.2e1"`: SageMaker's tuner writes those).

    Raises:
        PydanticCustomError: of type NOT_A, for a bool, a fraction, inf, nan or text that is no number.
    """
    if isinstance(value, bool):
        raise _not_a("a whole number")
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        raise _not_a("a whole number") from None
    if not number.is_integer():  # also refuses inf and nan
        raise _not_a("a whole number")
    return int(number)


def parse_real(value: Any) -> float:
    """A finite number as a float: `"inf"` and `"nan"` parse in Python, but no range check can refuse them.

    Raises:
        PydanticCustomError: of type NOT_A, for a bool, inf, nan or text that is no number.
    """
    if isinstance(value, bool):
        raise _not_a("a number")
    try:
        number = float(str(value).strip())
    except ValueError:
        raise _not_a("a number") from None
    if not math.isfinite(number):
        raise _not_a("a finite number")
    return number


def parse_word(value: Any) -> str:
    """Text without surrounding spaces, in lower case: choices are matched case-insensitively."""
    return str(value).strip().lower()


Flag = Annotated[bool, BeforeValidator(parse_flag)]
Whole = Annotated[int, BeforeValidator(parse_whole)]
Real = Annotated[float, BeforeValidator(parse_real)]
Word = Annotated[str, BeforeValidator(parse_word)]


def setting(default: Any, description: str, *, unit: str = "", accepts: str = "", **constraints: Any) -> Any:
    """A schema field: `pydantic.Field` with the unit and, where the type and range cannot say it,
    the wording of what the field accepts (read by `accepts` and `markdown_table`)."""
    return Field(default, description=description, json_schema_extra={"unit": unit, "accepts": accepts},
                 **constraints)


def _extra(field: FieldInfo, key: str) -> str:
    extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
    return str(extra.get(key) or "")


def _base(annotation: Any) -> Any:
    """The annotation without `| None` and `Annotated[...]`: `Whole | None` → int."""
    if get_origin(annotation) is Union or type(annotation).__name__ == "UnionType":
        members = [a for a in get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else annotation
    return get_args(annotation)[0] if get_origin(annotation) is Annotated else annotation


def choices(field: FieldInfo) -> tuple[str, ...]:
    """The values of a `Literal` field, in their order; () for other fields."""
    base = _base(field.annotation)
    return tuple(str(a) for a in get_args(base)) if get_origin(base) is Literal else ()


_KINDS = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
_TYPE_NAMES = {bool: "bool", int: "int", float: "float", str: "str"}


def type_name(field: FieldInfo) -> str:
    """The field's type as the reference tables show it: bool, int, float, str or choice."""
    return "choice" if choices(field) else _TYPE_NAMES.get(_base(field.annotation), str(field.annotation))


def _bounds(field: FieldInfo) -> str:
    """`>= 1`, `<= 1024`, `in (0, 1]`...: the field's ge/gt/le/lt constraints in words."""
    low = high = None
    for item in field.metadata:
        if isinstance(item, (annotated_types.Ge, annotated_types.Gt)):
            low = ("[", ">=", item.ge) if isinstance(item, annotated_types.Ge) else ("(", ">", item.gt)
        if isinstance(item, (annotated_types.Le, annotated_types.Lt)):
            high = ("]", "<=", item.le) if isinstance(item, annotated_types.Le) else (")", "<", item.lt)
    if low and high:
        return f"in {low[0]}{low[2]}, {high[2]}{high[0]}"
    bound = low or high
    return f"{bound[1]} {bound[2]}" if bound else ""


def accepts(field: FieldInfo) -> str:
    """What `field` accepts, in words: `one of adam, adamw, sgd`, `a number in (0, 1]`, ...

    The field's own `accepts` wording (see `setting`) when it has one.
    """
    if own := _extra(field, "accepts"):
        return own
    if names := choices(field):
        return f"one of {', '.join(names)}"
    return " ".join(p for p in (_KINDS.get(_base(field.annotation), "a value"), _bounds(field)) if p)


def unit(field: FieldInfo) -> str:
    """The field's unit (`pixels`, `seconds`, ...); "" when it has none."""
    return _extra(field, "unit")


_TAG_START = re.compile(r"<(?=[A-Za-z/!?])")  # `<name>` would be read as an HTML tag; `<= 10` is text


def _cell(text: str) -> str:
    """`text` for a Markdown table cell: `|` escaped, and `<` that would open an HTML tag outside code spans."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else _TAG_START.sub("&lt;", p) for i, p in enumerate(parts))


def show(value: Any) -> str:
    """A default as a user writes it: `true`, `8080`, `""`; None (no value) is `unset`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "unset"
    return str(value) if value != "" else '""'


def markdown_table(schema: type[BaseModel], name: Callable[[str], str]) -> str:
    """`schema`'s fields as a Markdown table: name (as `name(field name)` gives it), type, default,
    accepted values, unit and description, one row a field in the schema's order."""
    rows = ["| name | type | default | accepts | unit | description |",
            "| --- | --- | --- | --- | --- | --- |"]
    for field_name, field in schema.model_fields.items():
        default = show(field.default)
        cells = (f"`{name(field_name)}`", type_name(field), default if field.default is None else f"`{default}`",
                 accepts(field),
                 unit(field), field.description or "")
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"
