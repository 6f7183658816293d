"""Property-based fuzzing of a real server against its OpenAPI description (serving/openapi.yaml).

Hypothesis draws requests from the description (its content types, Accept values and header,
explanations among them) mixed with what it does not allow (other types, random bytes, broken images, arrays of any
shape and dtype, pickles, JSON of any shape); every answer must be a documented status with a
body matching its schema, never a 5xx, and the workers must survive.
"""

from __future__ import annotations

import io
import json
import pickle
import shutil
from importlib import resources

import hypothesis.strategies as st
import jsonschema
import numpy as np
import pytest
import requests
import yaml
from hypothesis import HealthCheck, given, settings
from PIL import Image

from image_classifier.explain import PNG_SIGNATURE
from tests.serving.images import b64, china_jpeg, npy, truncated_jpeg
from tests.serving.servers import Server, children, start, stop, wait_for_answer

pytestmark = pytest.mark.slow

SPEC = yaml.safe_load(resources.files("image_classifier.serving").joinpath("openapi.yaml").read_text())
INVOCATIONS = SPEC["paths"]["/invocations"]["post"]
DOCUMENTED = {int(code) for code in INVOCATIONS["responses"]}
CONTENT_TYPES = list(INVOCATIONS["requestBody"]["content"])
ACCEPTS = INVOCATIONS["parameters"][1]["schema"]["enum"]


def resolved(node):
    """`node` with every `#/components/...` $ref inlined and OpenAPI's `nullable` as JSON Schema."""
    if isinstance(node, dict):
        if "$ref" in node:
            target = SPEC
            for part in node["$ref"].lstrip("#/").split("/"):
                target = target[part]
            return resolved(target)
        node = {k: resolved(v) for k, v in node.items() if k not in ("nullable", "example")}
        return node
    if isinstance(node, list):
        return [resolved(v) for v in node]
    return node


def test_the_description_is_valid_openapi():
    from openapi_spec_validator import validate

    validate(SPEC)
    assert set(SPEC["paths"]) == {"/ping", "/invocations", "/execution-parameters"}


@pytest.fixture(scope="module", params=["fp32", "int8"])
def fuzz_server(request, model_dir, tmp_path_factory):
    """The server at the default precision and at int8 (the training job's int8 file)."""
    base_dir = tmp_path_factory.mktemp("opt_ml_fuzz")
    shutil.copytree(model_dir, base_dir / "model")
    process, url, log = start(base_dir, 2, SAGEMAKER_MAX_PAYLOAD_IN_MB="1", MODEL_SERVER_PRECISION=request.param)
    try:
        yield Server(url, process, log, wait_for_answer(url, process, log, want=200, workers=2))
    finally:
        if process.poll() is None:
            stop(process)


def arrays():
    """npy bodies of any shape (0 to 5 dimensions) and of several dtypes, valid ones among them."""
    shapes = st.lists(st.integers(0, 40), min_size=0, max_size=5).map(tuple)
    side = st.integers(0, 40)
    images = st.one_of(st.tuples(st.just(3), side, side), st.tuples(st.integers(0, 3), st.just(3), side, side))
    valid = st.sampled_from([(3, 32, 32), (2, 3, 32, 32), (1, 3, 40, 33)])
    dtypes = st.one_of(st.just("float32"),
                       st.sampled_from(["float64", "int8", "uint8", "float16", "bool", "complex64"]))
    return st.tuples(st.one_of(shapes, images, valid), dtypes).filter(lambda t: np.prod(t[0]) <= 50_000).map(
        lambda t: npy(np.ones(t[0], dtype=t[1])))


def json_bodies():
    images = st.sampled_from([china_jpeg(), truncated_jpeg(), b"", b"not an image"])
    good = st.lists(images.map(lambda body: {"b64": b64(body)}), min_size=0, max_size=3).map(
        lambda items: {"instances": items})
    anything = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                            lambda children: st.lists(children, max_size=3)
                            | st.dictionaries(st.sampled_from(["instances", "b64", "x"]), children, max_size=3),
                            max_leaves=10)
    return st.one_of(good, anything).map(lambda value: json.dumps(value).encode())


def image_bodies():
    jpeg = china_jpeg()
    return st.one_of(
        st.just(jpeg), st.just(truncated_jpeg()),
        st.integers(1, len(jpeg) - 1).map(lambda n: jpeg[:n]),                  # cut anywhere
        st.tuples(st.integers(0, len(jpeg) - 1), st.integers(0, 255)).map(     # one byte changed
            lambda t: jpeg[:t[0]] + bytes([t[1]]) + jpeg[t[0] + 1:]))


def other_bodies():
    return st.one_of(
        st.binary(max_size=2_000),
        st.just(pickle.dumps(np.ones((3, 32, 32), np.float32))),
        st.just(npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)),
        st.just(b"\0" * 1_100_000))                                             # over the 1 MB limit


# as HTTP carries it
HEADER_TEXT = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30).map(str.strip)


def content_types():
    return st.one_of(st.sampled_from(CONTENT_TYPES), st.sampled_from(CONTENT_TYPES).map(lambda t: t + "; q=1"),
                     st.none(), HEADER_TEXT)


def explain_attributes():
    """`explain=gradcam` with a class (a label, an index, or neither, valid or not) and a top_k."""
    classes = st.one_of(st.just(""), st.sampled_from(["one", "nine", "nope"]).map(lambda v: f",explain_class={v}"),
                        st.integers(-2, 12).map(lambda v: f";explain_class_id={v}"),
                        HEADER_TEXT.map(lambda v: f",explain_class={v}"))
    return st.tuples(st.sampled_from(["explain=gradcam", "EXPLAIN=gradcam,top_k=2", "explain=other"]), classes).map(
        "".join)


def requests_():
    """(body, headers): a body mostly sent as its own Content-Type, sometimes as any other."""
    header_text = HEADER_TEXT
    kinds = [(image_bodies(), "image/jpeg"), (arrays(), "application/x-npy"), (json_bodies(), "application/json"),
             (other_bodies(), "application/x-image")]
    bodies_and_types = st.one_of(*[st.tuples(body, st.one_of(st.just(kind), st.just(kind), content_types()))
                                   for body, kind in kinds])
    others = st.fixed_dictionaries({
        "Accept": st.one_of(st.none(), st.sampled_from(ACCEPTS), header_text),
        "X-Amzn-SageMaker-Custom-Attributes": st.one_of(
            st.none(), st.integers(-3, 1000).map(lambda k: f"top_k={k}"), header_text.map(lambda v: f"top_k={v}"),
            header_text, explain_attributes()),
    })
    return st.tuples(bodies_and_types, others).map(lambda t: (t[0][0], {
        k: v for k, v in {"Content-Type": t[0][1], **t[1]}.items() if v is not None}))


def check(response: requests.Response) -> None:
    assert response.status_code in DOCUMENTED, (response.status_code, response.text[:300])
    media = response.headers.get("Content-Type", "").split(";")[0]
    spec = INVOCATIONS["responses"][str(response.status_code)]
    content = resolved(spec)["content"]
    assert media in content, (response.status_code, media)
    if media == "application/json":
        jsonschema.validate(response.json(), content[media]["schema"])
    elif media == "image/png":
        assert response.content.startswith(PNG_SIGNATURE)
        assert Image.open(io.BytesIO(response.content)).format == "PNG"
    else:
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
        assert array.dtype == np.float32 and array.ndim == 2


def test_fuzz_invocations(fuzz_server):
    workers = set(fuzz_server.workers)
    session = requests.Session()

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=requests_())
    def one_request(request):
        body, headers = request
        check(session.post(f"{fuzz_server.url}/invocations", data=body, headers=headers, timeout=60))

    one_request()
    for path in ("/ping", "/execution-parameters"):
        response = session.get(f"{fuzz_server.url}{path}", timeout=10)
        assert response.status_code == 200
        jsonschema.validate(response.json(), resolved(SPEC["paths"][path]["get"]["responses"]["200"])[
            "content"]["application/json"]["schema"])
    assert children(fuzz_server.process.pid) == workers  # no worker died or was replaced
    assert "Traceback" not in fuzz_server.log_text()
