"""`X-Amzn-SageMaker-Custom-Attributes` parsing (`serving.attributes`): top_k and explanations."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from image_classifier.serving import attributes
from image_classifier.serving.attributes import Attributes
from image_classifier.serving.errors import BadRequestError

LABELS = ["zero", "one", "two", "three", "four", "five", "six"]


@pytest.mark.parametrize("header, expected", [
    (None, Attributes(5)),
    ("", Attributes(5)),
    ("top_k=3", Attributes(3)),
    ("top_k=99", Attributes(7)),
    ("Top_K = 2 ; other=x", Attributes(2)),
    ("top_k=2,top_k=junk", Attributes(2)),                       # the first of a key counts
    ("trace=abc,session=1", Attributes(5)),                      # keys of the client's own
    ("explain=gradcam", Attributes(5, "gradcam")),
    ("EXPLAIN=GradCAM;top_k=1", Attributes(1, "gradcam")),
    ("explain=gradcam,explain_class=three", Attributes(5, "gradcam", 3)),
    ("explain_class=six;explain=gradcam", Attributes(5, "gradcam", 6)),
    ("explain=gradcam,explain_class_id=0", Attributes(5, "gradcam", 0)),
    ("explain=gradcam, explain_class_id = 6 ", Attributes(5, "gradcam", 6)),
])
def test_parse(header, expected):
    assert attributes.parse(header, LABELS) == expected


@pytest.mark.parametrize("header, words", [
    ("top_k=0", "top_k must be a positive integer, got '0'"),
    ("top_k=abc", "top_k"),
    ("explain=lime", "explain must be one of gradcam, got 'lime'"),
    ("explain=", "explain must be one of gradcam"),
    ("explain=gradcam,explain_class=Three", "explain_class 'Three' is not one of the model's 7 labels"),
    ("explain=gradcam,explain_class=", "explain_class '' is not one of"),
    ("explain=gradcam,explain_class_id=7", "explain_class_id must be a class index, 0 to 6, got '7'"),
    ("explain=gradcam,explain_class_id=-1", "0 to 6, got '-1'"),
    ("explain=gradcam,explain_class_id=two", "got 'two'"),
    ("explain=gradcam,explain_class_id=\u00b2", "got '\u00b2'"),  # a Latin-1 digit Python's int() refuses
    ("explain=gradcam,explain_class=one,explain_class_id=1", "not both"),
    ("explain_class=one", "need explain=gradcam"),
    ("explain_class_id=1", "need explain=gradcam"),
])
def test_parse_refuses(header, words):
    with pytest.raises(BadRequestError) as info:
        attributes.parse(header, LABELS)
    assert info.value.status_code == 400 and words in info.value.message


def test_the_message_for_an_unknown_label_lists_a_few():
    with pytest.raises(BadRequestError) as info:
        attributes.parse("explain=gradcam,explain_class=dog", LABELS)
    assert "('zero', 'one', 'two', 'three', 'four', ...)" in info.value.message
    assert "explain_class_id=0 to 6" in info.value.message


def test_pairs():
    assert attributes.pairs("a=1; B = 2 ,a=3,c") == {"a": "1", "b": "2", "c": ""}
    assert attributes.pairs(None) == {"": ""}


def test_the_header_is_spelled_once_and_costs_no_heavy_import():
    """Only serving/attributes.py spells the header among the package's modules (the client,
    transform and the serving benchmark import it), and importing it pulls in neither Flask nor
    torch nor NumPy (a client needs none of them)."""
    package = Path(attributes.__file__).parents[1]
    spelled = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "X-Amzn-SageMaker-Custom-Attributes" in path.read_text())
    assert spelled == ["serving/attributes.py"]
    code = ("import sys, image_classifier.serving.attributes; "
            "print(sorted({'flask', 'torch', 'numpy', 'werkzeug'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.stdout.strip() == "[]"


def test_the_description_s_example_is_valid_for_any_model():
    """openapi.yaml's example header holds for a model of one class too (schemathesis sends it as valid)."""
    description = yaml.safe_load(resources.files("image_classifier.serving").joinpath("openapi.yaml").read_text())
    header, = [parameter for parameter in description["paths"]["/invocations"]["post"]["parameters"]
               if parameter["name"] == attributes.HEADER]
    for labels in (["only"], LABELS):
        assert attributes.parse(header["schema"]["example"], labels) == Attributes(min(3, len(labels)), "gradcam", 0)
