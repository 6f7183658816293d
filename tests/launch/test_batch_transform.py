"""scripts/batch_transform.py against moto_server: the transform job as received, input checks, gathering.

moto records a transform job as Completed at once and runs no container, so the tests write
the `.out` answers themselves, where and as SageMaker writes them (API_TransformOutput: the
input key relative to the input prefix, plus `.out`; the container's JSON answer inside).
"""

import csv
import json
import shutil

import boto3
import pytest

from image_classifier.launch import batch_transform
from image_classifier.serving.app import create_app

from .common import ROLE, refuse

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/image-classifier-serve:abc1234"
MODEL_DATA = "s3://ic-out/jobs/t-1/output/model.tar.gz"
INPUT = "s3://ic-data/dogImages/test/"
OUTPUT = "s3://ic-out/transform/"
KEYS = ["001.Affenpinscher/a.jpg", "001.Affenpinscher/b.jpg", "002.Afghan_hound/c.png", "002.Afghan_hound/d.jpeg"]


def answer(key: str) -> dict:
    """The container's JSON answer for one image (top-2), made up from its key."""
    first = key.split("/")[0]
    return {"predictions": [{"label": first, "class_id": int(first[:3]) - 1 if first[:3].isdigit() else 0,
                             "probability": 0.75},
                            {"label": "other", "class_id": 9, "probability": 0.25}]}


@pytest.fixture
def s3(aws):
    client = boto3.client("s3", region_name="us-east-1")
    for bucket in ("ic-data", "ic-out"):
        client.create_bucket(Bucket=bucket)
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=obj["Key"])
    for key in KEYS:
        client.put_object(Bucket="ic-data", Key=f"dogImages/test/{key}", Body=b"\xff\xd8 image bytes " + key.encode())
    return client


def write_answers(s3, keys):
    for key in keys:
        s3.put_object(Bucket="ic-out", Key=f"transform/{key}.out", Body=json.dumps(answer(key)).encode())


def run(*args) -> int:
    return batch_transform.main(["--region", "us-east-1", "--poll", "0", *args])


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def new_model_args(results, *more):
    return ["--input", INPUT, "--output", OUTPUT, "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA,
            "--results", str(results), *more]


def test_the_job_the_emulator_receives_and_the_gathered_csv(s3, received, tmp_path, monkeypatch):
    write_answers(s3, KEYS)
    results = tmp_path / "results.csv"
    assert run(*new_model_args(results, "--env", "MODEL_SERVER_WORKERS=2", "--instance-type", "ml.c5.xlarge",
                               "--instance-count", "2", "--job-name", "ic-transform-1")) == 0

    [model] = [r["body"] for r in received("CreateModel")]
    [job] = [r["body"] for r in received("CreateTransformJob")]
    assert model["PrimaryContainer"] == {"Image": IMAGE, "ModelDataUrl": MODEL_DATA,
                                         "Environment": {"MODEL_SERVER_WORKERS": "2"}}
    assert job["ModelName"] == model["ModelName"] and job["TransformJobName"] == "ic-transform-1"
    assert job["TransformInput"] == {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": INPUT}},
                                     "ContentType": "application/x-image", "CompressionType": "None",
                                     "SplitType": "None"}
    assert job["TransformOutput"] == {"S3OutputPath": OUTPUT, "Accept": "application/json", "AssembleWith": "None"}
    assert job["TransformResources"] == {"InstanceType": "ml.c5.xlarge", "InstanceCount": 2}
    assert "Environment" not in job  # the Model carries it

    # the settings are what the container itself answers on /execution-parameters with that environment
    monkeypatch.setenv("MODEL_SERVER_WORKERS", "2")
    container = create_app({"TESTING": True, "MODEL_DIR": str(tmp_path), "LOAD_IN_BACKGROUND": False}).test_client()
    params = container.get("/execution-parameters").get_json()
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (params["MaxConcurrentTransforms"], 6) == (16, 6)
    assert params["BatchStrategy"] == "SINGLE_RECORD" and job["BatchStrategy"] == "SingleRecord"

    got = rows(results)
    assert [r["key"] for r in got] == [f"{INPUT}{key}" for key in KEYS]
    for row, key in zip(got, KEYS):
        expected = answer(key)["predictions"]
        assert (row["label"], int(row["class_id"]), float(row["probability"])) == (
            expected[0]["label"], expected[0]["class_id"], expected[0]["probability"])
        assert json.loads(row["top_k"]) == expected and row["error"] == ""


def test_an_existing_models_environment_sets_the_job(s3, received, tmp_path):
    boto3.client("sagemaker", region_name="us-east-1").create_model(
        ModelName="ic-live", ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": MODEL_DATA,
                          "Environment": {"MODEL_SERVER_THREADS": "4", "SAGEMAKER_MAX_PAYLOAD_IN_MB": "10"}})
    write_answers(s3, KEYS)
    assert run("--input", INPUT, "--output", OUTPUT, "--model-name", "ic-live", "--results",
               str(tmp_path / "r.csv"), "--env", "MODEL_SERVER_WORKERS=3") == 0
    assert len(received("CreateModel")) == 1  # the test's own
    [job] = [r["body"] for r in received("CreateTransformJob")]
    assert job["ModelName"] == "ic-live" and job["Environment"] == {"MODEL_SERVER_WORKERS": "3"}
    assert (job["MaxConcurrentTransforms"], job["MaxPayloadInMB"]) == (12, 10)


@pytest.mark.parametrize("key, body, words", [
    ("notes/readme.txt", b"text", "not images"),
    ("003.Big/huge.jpg", b"\0" * 6_000_001, "over the container's payload limit of 6000000 bytes"),
])
def test_input_that_would_fail_the_job_is_refused_before_anything_is_created(s3, received, tmp_path, capsys,
                                                                              key, body, words):
    s3.put_object(Bucket="ic-data", Key=f"dogImages/test/{key}", Body=body)
    assert run(*new_model_args(tmp_path / "r.csv")) == 2
    err = capsys.readouterr().err
    assert words in err and f"{INPUT}{key}" in err
    assert not received("CreateModel") and not received("CreateTransformJob")


def test_an_empty_prefix_is_refused(s3, received, tmp_path, capsys):
    code = batch_transform.main(["--region", "us-east-1", "--input", "s3://ic-data/nothing-here/", "--output", OUTPUT,
                                 "--image", IMAGE, "--role", ROLE, "--model-data", MODEL_DATA,
                                 "--results", str(tmp_path / "r.csv")])
    assert code == 2 and "no objects" in capsys.readouterr().err
    assert not received("CreateModel") and not received("CreateTransformJob")


def test_gathering_resumes_without_duplicates(s3, received, tmp_path, capsys):
    """Half the answers are there when the job is gathered (exit 1, the rest listed);
    `--gather JOB` later adds only the missing rows."""
    results = tmp_path / "results.csv"
    write_answers(s3, KEYS[:2])
    assert run(*new_model_args(results, "--job-name", "ic-half")) == 1
    err = capsys.readouterr().err
    assert "2 object(s) have no answer" in err and "--gather ic-half" in err
    assert [r["key"] for r in rows(results)] == [f"{INPUT}{k}" for k in KEYS[:2]]

    write_answers(s3, KEYS[2:])
    assert run("--gather", "ic-half", "--results", str(results)) == 0
    assert [r["key"] for r in rows(results)] == [f"{INPUT}{k}" for k in KEYS]
    assert run("--gather", "ic-half", "--results", str(results)) == 0  # nothing left: nothing added
    assert len(rows(results)) == len(KEYS)
    assert len(received("CreateTransformJob")) == 1


def test_an_unreadable_answer_is_a_row_with_its_error(s3, tmp_path):
    write_answers(s3, KEYS[1:])
    s3.put_object(Bucket="ic-out", Key=f"transform/{KEYS[0]}.out", Body=b"<html>not json</html>")
    results = tmp_path / "r.csv"
    assert run(*new_model_args(results)) == 0
    first = rows(results)[0]
    assert first["key"] == f"{INPUT}{KEYS[0]}" and first["label"] == "" and "unreadable answer" in first["error"]


def test_a_refused_job_leaves_no_model_behind(s3, received, tmp_path, monkeypatch, capsys):
    refuse(monkeypatch, batch_transform, "CreateTransformJob", "ResourceLimitExceeded", "no ml.c5.xlarge for you")
    assert run(*new_model_args(tmp_path / "r.csv")) == 1
    assert "ResourceLimitExceeded" in capsys.readouterr().err
    [model] = [r["body"]["ModelName"] for r in received("CreateModel")]
    assert [r["body"]["ModelName"] for r in received("DeleteModel")] == [model]


def test_dry_run_sends_nothing_and_the_emulator_accepts_its_requests(s3, received, tmp_path, capsys):
    assert run(*new_model_args(tmp_path / "r.csv", "--dry-run")) == 0
    out = capsys.readouterr().out
    requests = json.loads(out[: out.rindex("]") + 1])
    assert not received("CreateModel") and not received("CreateTransformJob")
    assert [list(r) for r in requests] == [["CreateModel"], ["CreateTransformJob"]]
    sm = boto3.client("sagemaker", region_name="us-east-1")
    sm.create_model(**requests[0]["CreateModel"])
    sm.create_transform_job(**requests[1]["CreateTransformJob"])
    assert "4 object(s)" in out


def test_answer_key_follows_the_relative_key_then_a_unique_trailing_path():
    inputs = [batch_transform.InputObject(f"{INPUT}{k}", k, 1) for k in ("a/x.jpg", "b/x.jpg", "c/y.jpg")]
    answers = {"a/x.jpg": "out/a/x.jpg.out", "test/c/y.jpg": "out/test/c/y.jpg.out"}
    assert batch_transform.answer_key(inputs[0], answers) == "out/a/x.jpg.out"
    assert batch_transform.answer_key(inputs[1], answers) is None
    assert batch_transform.answer_key(inputs[2], answers) == "out/test/c/y.jpg.out"
    assert batch_transform.answer_key(inputs[1], {"x.jpg": "k1", "q/b/x.jpg": "k2"}) is None  # two candidates


def test_an_answer_two_inputs_could_claim_is_taken_by_neither(s3, tmp_path):
    for key in ("e/x.jpg", "f/x.jpg"):
        s3.put_object(Bucket="ic-data", Key=f"dogImages/test/{key}", Body=b"image")
    write_answers(s3, [*KEYS, "x.jpg"])
    results = tmp_path / "r.csv"
    assert run(*new_model_args(results)) == 1
    assert [r["key"] for r in rows(results)] == [f"{INPUT}{k}" for k in KEYS]


# --- the whole path with a real model server --------------------------------------------------

@pytest.fixture(scope="module")
def model_server(model_dir, tmp_path_factory):
    """`python -m image_classifier.serve` (gunicorn) on loopback, serving the digits model."""
    from tests.serving.servers import start, stop, wait_for_answer

    base = tmp_path_factory.mktemp("opt_ml")
    shutil.copytree(model_dir, base / "model")
    process, url, log = start(base, 1)
    wait_for_answer(url, process, log, want=200, workers=1)
    yield url
    stop(process)


@pytest.mark.slow
def test_a_real_server_answers_the_job_and_the_csv_equals_the_local_transforms(s3, received, model_server,
                                                                                digit_tree, tmp_path):
    """The emulator runs the job against a real model server (tests/launch/emulator.py: the
    Model's EMULATOR_MODEL_SERVER), as Batch Transform would: each object POSTed whole with the
    job's ContentType, `.out` written beside. The gathered CSV must equal what `image-classifier
    transform` writes from the same images against the same server."""
    from image_classifier import transform

    test_dir = digit_tree / "test"
    for key, path in transform.list_images(test_dir):
        s3.put_object(Bucket="ic-data", Key=f"digits/test/{key}", Body=path.read_bytes())
    boto3.client("sagemaker", region_name="us-east-1").create_model(
        ModelName="ic-digits", ExecutionRoleArn=ROLE,
        PrimaryContainer={"Image": IMAGE, "ModelDataUrl": MODEL_DATA,
                          "Environment": {"EMULATOR_MODEL_SERVER": model_server, "MODEL_SERVER_THREADS": "4"}})
    results = tmp_path / "s3.csv"
    assert run("--input", "s3://ic-data/digits/test/", "--output", "s3://ic-out/digits/", "--model-name", "ic-digits",
               "--results", str(results), "--job-name", "ic-digits-1") == 0
    [job] = [r["body"] for r in received("CreateTransformJob")]
    assert job["MaxConcurrentTransforms"] == 4

    local = tmp_path / "local.csv"
    assert transform.transform(test_dir, local, model_server, progress=False).failed == 0
    by_key = {row["key"].removeprefix("s3://ic-data/digits/test/"): row for row in transform.read_results(results)}
    expected = {row["key"]: row for row in transform.read_results(local)}
    assert len(by_key) == len(expected) == 24
    for key, row in expected.items():
        got = by_key[key]
        assert (got["label"], got["class_id"], got["error"]) == (row["label"], row["class_id"], row["error"])
        assert [p["class_id"] for p in got["top_k"]] == [p["class_id"] for p in row["top_k"]]
        assert got["probability"] == pytest.approx(row["probability"], abs=1e-6)
