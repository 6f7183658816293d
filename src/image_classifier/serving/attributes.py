"""What a request asks beyond its body, from `X-Amzn-SageMaker-Custom-Attributes`: top_k, explanations.

SageMaker passes the header through from `InvokeEndpoint(CustomAttributes=...)` untouched. It
holds `key=value` pairs separated by commas or semicolons (`top_k=3,explain=gradcam`); keys
are case-insensitive, the first of a repeated key counts, and keys this server does not
know are ignored (the header is the client's to use).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from image_classifier.serving.errors import BadRequestError

# The one spelling of the header; clients (transform.py, client.py, benchmarks/serving.py) import it from here, so this
# module imports nothing heavy (no Flask, torch or NumPy): tests/serving/test_attributes.py.
HEADER = "X-Amzn-SageMaker-Custom-Attributes"
DEFAULT_TOP_K = 5
EXPLAIN_METHODS = ("gradcam",)


@dataclass(frozen=True)
class Attributes:
    """A request's attributes, checked against the model."""

    top_k: int                           # classes in each JSON prediction list, 1 to the classes
    explain: str | None = None           # "gradcam": add explanations; None: the plain, fast path
    explain_class_id: int | None = None  # the class each explanation is for; None: each image's top class


def pairs(header: str | None) -> dict[str, str]:
    """The header's `key=value` pairs: keys lower-cased, values stripped, the first of a key kept."""
    found: dict[str, str] = {}
    for pair in (header or "").replace(";", ",").split(","):
        key, _, value = pair.partition("=")
        found.setdefault(key.strip().lower(), value.strip())
    return found


def _top_k(value: str | None, num_classes: int) -> int:
    if value is None:
        return min(DEFAULT_TOP_K, num_classes)
    try:
        k = int(value)
    except ValueError:
        k = 0
    if k < 1:
        raise BadRequestError(f"top_k must be a positive integer, got {value!r}")
    return min(k, num_classes)


def _class_id(found: dict[str, str], labels: Sequence[str]) -> int | None:
    """The class named by `explain_class` (a label) or `explain_class_id` (an index), if either is given."""
    label, index = found.get("explain_class"), found.get("explain_class_id")
    if label is not None and index is not None:
        raise BadRequestError("give explain_class (a label) or explain_class_id (an index), not both")
    if label is not None:
        if label not in labels:
            shown = ", ".join(repr(name) for name in labels[:5]) + (", ..." if len(labels) > 5 else "")
            raise BadRequestError(f"explain_class {label!r} is not one of the model's {len(labels)} labels "
                                  f"({shown}); or give explain_class_id=0 to {len(labels) - 1}")
        return list(labels).index(label)
    if index is not None:
        try:
            class_id = int(index)
        except ValueError:
            class_id = -1
        if not 0 <= class_id < len(labels):
            raise BadRequestError(f"explain_class_id must be a class index, 0 to {len(labels) - 1}, got {index!r}")
        return class_id
    return None


def parse(header: str | None, labels: Sequence[str]) -> Attributes:
    """The attributes of a request to the model whose classes are `labels` (class_id = index).

    `top_k=K` (default 5, clamped to the classes); `explain=gradcam` adds a Grad-CAM explanation
    of each image, for its most probable class or for the class named by `explain_class=<label>`
    or `explain_class_id=<index>`.

    Raises:
        BadRequestError: top_k is not a positive integer; explain is not a known method; the
            class to explain is not one of the model's, or is given without explain (400).
    """
    found = pairs(header)
    top_k = _top_k(found.get("top_k"), len(labels))
    explain = found.get("explain")
    if explain is not None and explain.lower() not in EXPLAIN_METHODS:
        raise BadRequestError(f"explain must be one of {', '.join(EXPLAIN_METHODS)}, got {explain!r}")
    class_id = _class_id(found, labels)
    if class_id is not None and explain is None:
        raise BadRequestError("explain_class and explain_class_id need explain=gradcam")
    return Attributes(top_k, explain and explain.lower(), class_id)
