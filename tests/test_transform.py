"""`image-classifier transform`: the results CSV, retries and refusals against a stand-in server,
then the sample data against a real gunicorn server that restarts mid-run, and runs killed and rerun."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import urllib3
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

import image_classifier
from image_classifier import cli, transform
from image_classifier.transform import COLUMNS, ResultsCsv, read_results
from tests.serving.servers import free_port, start, stop, wait_for_answer

PREDICTIONS = [{"label": "three", "class_id": 3, "probability": 0.75},
               {"label": "eight", "class_id": 8, "probability": 0.25}]


# --- the results CSV ------------------------------------------------------------------------

def test_results_csv_header_once_rows_appended(tmp_path):
    path = tmp_path / "results.csv"
    with ResultsCsv(path) as results:
        assert results.done == set()
        results.append("a/1.png", PREDICTIONS)
        results.append("b.jpg", None, "400: body is not a readable image")
    with ResultsCsv(path) as results:
        assert results.done == {"a/1.png", "b.jpg"}
        results.append("c.png", PREDICTIONS[:1])
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(COLUMNS) and lines.count(lines[0]) == 1 and len(lines) == 4
    assert lines[2] == "b.jpg,,,,,400: body is not a readable image"
    assert read_results(path) == [
        {"key": "a/1.png", "label": "three", "class_id": 3, "probability": 0.75, "top_k": PREDICTIONS, "error": None},
        {"key": "b.jpg", "label": None, "class_id": None, "probability": None, "top_k": None,
         "error": "400: body is not a readable image"},
        {"key": "c.png", "label": "three", "class_id": 3, "probability": 0.75, "top_k": PREDICTIONS[:1],
         "error": None}]


def test_results_csv_keys_and_errors_that_need_quoting(tmp_path):
    path = tmp_path / "results.csv"
    keys = ['with, comma.png', 'with "quotes".png', "ünïcode/ß.png"]
    with ResultsCsv(path) as results:
        for key in keys:
            results.append(key, None, 'line one\nline "two",\tthree')
    assert [row["key"] for row in read_results(path)] == keys
    assert {row["error"] for row in read_results(path)} == {'line one line "two", three'}
    assert len(path.read_text().splitlines()) == 1 + len(keys)  # one line a row
    assert ResultsCsv(path).done == set(keys)


@pytest.mark.parametrize("tail", [b"c.png,thr", b"c.png,three,3,0.75,\"[{\"\"label", b"c"])
def test_a_partial_last_line_is_cut_off(tmp_path, tail):
    """A run killed while writing a row left part of it: reading ignores it, opening removes it."""
    path = tmp_path / "results.csv"
    with ResultsCsv(path) as results:
        results.append("a.png", PREDICTIONS)
        results.append("b.png", PREDICTIONS)
    whole = path.read_bytes()
    path.write_bytes(whole + tail)
    assert [row["key"] for row in read_results(path)] == ["a.png", "b.png"]
    with ResultsCsv(path) as results:
        assert results.done == {"a.png", "b.png"}
        assert path.read_bytes() == whole
        results.append("c.png", PREDICTIONS)
    assert [row["key"] for row in read_results(path)] == ["a.png", "b.png", "c.png"]


@pytest.mark.parametrize("content", [b"", b"key,lab"])
def test_an_empty_file_or_a_partial_header_gets_the_header(tmp_path, content):
    path = tmp_path / "results.csv"
    path.write_bytes(content)
    with ResultsCsv(path) as results:
        results.append("a.png", PREDICTIONS)
    assert path.read_text().splitlines()[0] == ",".join(COLUMNS)
    assert [row["key"] for row in read_results(path)] == ["a.png"]


def test_another_csv_is_refused_and_left_alone(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("name,score\nx,1\npartial")
    with pytest.raises(ValueError, match="not a results CSV"):
        ResultsCsv(path)
    assert path.read_text() == "name,score\nx,1\npartial"


# --- files and backoff ----------------------------------------------------------------------

def test_list_images(tmp_path):
    for name in ("b/2.PNG", "b/1.jpeg", "a.JPG", "c/d/e.webp", "f.tif", "g.tiff", "h.bmp", "i.gif",
                 "notes.txt", "model.npy", "noext", "b/k.Jpg"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "folder.png").mkdir()  # a folder named like an image
    keys = [key for key, _ in transform.list_images(tmp_path)]
    assert keys == ["a.JPG", "b/1.jpeg", "b/2.PNG", "b/k.Jpg", "c/d/e.webp", "f.tif", "g.tiff", "h.bmp", "i.gif"]
    assert all(path == tmp_path / key for key, path in transform.list_images(tmp_path))


def test_list_images_refuses_a_missing_or_empty_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a folder"):
        transform.list_images(tmp_path / "missing")
    with pytest.raises(ValueError, match="no images under"):
        transform.list_images(tmp_path)


def test_backoff_seconds_is_what_urllib3_waits():
    retry = transform.retry_policy(transform.DEFAULT_RETRIES)
    waited = 0.0
    for _ in range(transform.DEFAULT_RETRIES):
        retry = retry.increment("POST", "/invocations", error=urllib3.exceptions.ProtocolError("closed"))
        waited += retry.get_backoff_time()
    with pytest.raises(urllib3.exceptions.MaxRetryError):
        retry.increment("POST", "/invocations", error=urllib3.exceptions.ProtocolError("closed"))
    assert waited == transform.backoff_seconds(transform.DEFAULT_RETRIES) == 115
    assert transform.backoff_seconds(0) == transform.backoff_seconds(1) == 0


# --- against a stand-in server ------------------------------------------------------------

class FakeServer:
    """A stand-in model server on loopback: each image's body is its key; `script[key]` lists
    the (status, document) answers it gets in turn, then 200 with PREDICTIONS. Records requests."""

    def __init__(self):
        self.parameters: dict | None = {"MaxConcurrentTransforms": 3, "BatchStrategy": "SINGLE_RECORD",
                                        "MaxPayloadInMB": 6}
        self.script: dict[str, list[tuple[int, dict]]] = {}
        self.delay = 0.0  # seconds each /invocations takes
        self.requests: list[tuple[str, str, dict]] = []  # (path, key, headers)
        self.most_in_flight = 0
        self._in_flight = 0
        self._lock = threading.Lock()
        self._server = make_server("127.0.0.1", 0, self.app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True).start()

    def sent(self, path: str = "/invocations") -> list[str]:
        return [key for p, key, _ in self.requests if p == path]

    @Request.application
    def app(self, request: Request) -> Response:
        key = request.get_data().decode()
        with self._lock:
            self.requests.append((request.path, key, dict(request.headers)))
            self._in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self._in_flight)
            answers = self.script.get(key) or []
            status, document = answers.pop(0) if answers else (200, {"predictions": PREDICTIONS})
        try:
            time.sleep(self.delay)
            if request.path == "/execution-parameters":
                status, document = (200, self.parameters) if self.parameters else (404, {"error": "not found"})
            return Response(json.dumps(document), status, mimetype="application/json")
        finally:
            with self._lock:
                self._in_flight -= 1

    def close(self):
        self._server.shutdown()


@pytest.fixture
def quick_backoff(monkeypatch):
    """Retries 10 ms apart, then 20, 40...: the retry tests take no time."""
    monkeypatch.setattr(transform, "BACKOFF_FACTOR", 0.01)


@pytest.fixture
def fake(quick_backoff):
    server = FakeServer()
    yield server
    server.close()


def image_folder(root: Path, keys: list[str]) -> Path:
    for key in keys:
        (root / key).parent.mkdir(parents=True, exist_ok=True)
        (root / key).write_bytes(key.encode())
    return root


KEYS = ["a.png", "b.jpg", "e.gif", "sub/c.png", "sub/deeper/d.webp"]  # sorted


def run(fake_or_url, images: Path, output: Path, *args: str) -> int:
    url = fake_or_url if isinstance(fake_or_url, str) else fake_or_url.url
    return cli.main(["transform", "--input", str(images), "--output", str(output), "--url", url, *args])


def test_scores_every_file_with_the_headers(fake, tmp_path, capsys):
    images = image_folder(tmp_path / "images", KEYS)
    assert run(fake, images, tmp_path / "out" / "results.csv", "--top-k", "2") == 0
    rows = read_results(tmp_path / "out" / "results.csv")
    assert sorted(row["key"] for row in rows) == KEYS
    assert all(row["top_k"] == PREDICTIONS and row["label"] == "three" and row["error"] is None for row in rows)
    assert fake.sent("/execution-parameters") == [""] and sorted(fake.sent()) == KEYS
    for _path, _, headers in fake.requests[1:]:
        assert headers["Content-Type"] == "application/x-image" and headers["Accept"] == "application/json"
        assert headers["X-Amzn-Sagemaker-Custom-Attributes"] == "top_k=2"
    out = capsys.readouterr().out
    assert "5 scored, 0 refused (error rows), 0 failed, of 5 files (0 already there)" in out
    assert "3 requests at a time" in out


def test_a_rerun_sends_only_the_missing_files(fake, tmp_path, capsys):
    images = image_folder(tmp_path / "images", KEYS)
    output = tmp_path / "results.csv"
    with ResultsCsv(output) as results:
        results.append("b.jpg", PREDICTIONS)
        results.append("sub/c.png", None, "400: refused before")
    assert run(fake, images, output) == 0
    assert sorted(fake.sent()) == ["a.png", "e.gif", "sub/deeper/d.webp"]
    assert sorted(row["key"] for row in read_results(output)) == KEYS
    assert "3 scored, 0 refused (error rows), 0 failed, of 5 files (2 already there)" in capsys.readouterr().out

    before, sent = output.read_bytes(), len(fake.requests)
    assert run(fake, images, output) == 0
    assert len(fake.requests) == sent and output.read_bytes() == before  # not even /execution-parameters
    assert capsys.readouterr().out.strip() == f"all 5 files are already in {output}: nothing to do"


def test_a_4xx_is_an_error_row_and_not_retried(fake, tmp_path, capsys):
    images = image_folder(tmp_path / "images", KEYS)
    fake.script["b.jpg"] = [(400, {"error": "body is not a readable image"})]
    fake.script["e.gif"] = [(415, {"error": "unsupported Content-Type"})]
    assert run(fake, images, tmp_path / "results.csv") == 0
    rows = {row["key"]: row for row in read_results(tmp_path / "results.csv")}
    assert rows["b.jpg"]["error"] == "400: body is not a readable image" and rows["b.jpg"]["label"] is None
    assert rows["e.gif"]["error"] == "415: unsupported Content-Type" and rows["e.gif"]["top_k"] is None
    assert fake.sent().count("b.jpg") == 1 and fake.sent().count("e.gif") == 1
    assert "3 scored, 2 refused (error rows), 0 failed" in capsys.readouterr().out


def test_a_5xx_is_retried(fake, tmp_path, capsys):
    images = image_folder(tmp_path / "images", KEYS)
    fake.script["a.png"] = [(503, {"error": "loading"}), (500, {"error": "internal server error"})]
    assert run(fake, images, tmp_path / "results.csv") == 0
    assert fake.sent().count("a.png") == 3
    assert {row["key"]: row for row in read_results(tmp_path / "results.csv")}["a.png"]["top_k"] == PREDICTIONS
    assert "5 scored, 0 refused (error rows), 0 failed, of 5 files (0 already there); 1 answered after retries" \
        in capsys.readouterr().out


def test_a_file_failing_every_retry_gets_no_row_and_a_rerun_does_it(fake, tmp_path, capsys):
    images = image_folder(tmp_path / "images", KEYS)
    output = tmp_path / "results.csv"
    fake.script["sub/c.png"] = [(503, {"error": "loading"})] * 3
    assert run(fake, images, output, "--retries", "2") == 1
    assert fake.sent().count("sub/c.png") == 3
    assert sorted(row["key"] for row in read_results(output)) == sorted(set(KEYS) - {"sub/c.png"})
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines()[-1] == "error: 1 files failed after retries; rerun to retry them"
    assert "Traceback" not in captured.err

    assert run(fake, images, output, "--retries", "2") == 0
    assert sorted(row["key"] for row in read_results(output)) == KEYS


def test_without_a_server_every_file_fails(tmp_path, capsys, quick_backoff):
    images = image_folder(tmp_path / "images", KEYS)
    started = time.monotonic()
    assert run(f"http://127.0.0.1:{free_port()}", images, tmp_path / "results.csv", "--retries", "1") == 1
    assert time.monotonic() - started < 10
    assert read_results(tmp_path / "results.csv") == []
    assert "error: 5 files failed after retries; rerun to retry them" in capsys.readouterr().err


def test_a_file_over_the_payload_limit_is_refused_without_a_request(fake, tmp_path):
    fake.parameters["MaxPayloadInMB"] = 1
    images = image_folder(tmp_path / "images", KEYS)
    (images / "at-limit.png").write_bytes(b"x" * 1_000_000)
    (images / "over.png").write_bytes(b"x" * 1_000_001)
    assert run(fake, images, tmp_path / "results.csv") == 0
    rows = {row["key"]: row for row in read_results(tmp_path / "results.csv")}
    assert rows["over.png"]["error"] == ("refused without a request: 1,000,001 bytes, over the server's "
                                         "MaxPayloadInMB (1,000,000 bytes)")
    assert rows["at-limit.png"]["error"] is None
    assert len(fake.sent()) == len(KEYS) + 1  # all but over.png


@pytest.mark.parametrize("parameters, args, expected", [
    ({"MaxConcurrentTransforms": 3, "MaxPayloadInMB": 6}, [], 3),
    ({"MaxConcurrentTransforms": 3, "MaxPayloadInMB": 6}, ["--concurrency", "2"], 2),
    (None, [], transform.DEFAULT_CONCURRENCY),  # the server has no /execution-parameters (404)
    ({"MaxConcurrentTransforms": 0}, [], transform.DEFAULT_CONCURRENCY),
])
def test_requests_at_a_time(fake, tmp_path, capsys, parameters, args, expected):
    fake.parameters, fake.delay = parameters, 0.1
    images = image_folder(tmp_path / "images", [f"{i:02d}.png" for i in range(12)])
    assert run(fake, images, tmp_path / "results.csv", *args) == 0
    assert fake.most_in_flight == expected
    assert f"{expected} requests at a time" in capsys.readouterr().out


@pytest.mark.parametrize("args, words", [
    (["--input", "{tmp}/missing"], "is not a folder"),
    (["--input", "{tmp}/empty"], "no images under"),
    (["--url", "localhost:8080"], "--url must be http(s)://HOST[:PORT]"),
    (["--output", "{tmp}"], "is a folder: name the CSV file"),
    (["--output", "{tmp}/other.csv"], "is not a results CSV"),
    (["--concurrency", "0"], "--concurrency must be at least 1"),
    (["--top-k", "0"], "--top-k must be at least 1"),
    (["--retries", "-1"], "--retries must be at least 0"),
])
def test_bad_arguments_exit_2_with_one_line(tmp_path, capsys, args, words):
    image_folder(tmp_path / "images", KEYS)
    (tmp_path / "empty").mkdir()
    (tmp_path / "other.csv").write_text("a,b\n")
    defaults = {"--input": str(tmp_path / "images"), "--output": str(tmp_path / "results.csv"),
                "--url": f"http://127.0.0.1:{free_port()}"}
    given = dict(zip(args[::2], (value.format(tmp=tmp_path) for value in args[1::2])))
    argv = [item for pair in {**defaults, **given}.items() for item in pair]
    assert cli.main(["transform", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("error: ") and words in captured.err


# --- a real server: restarted mid-run, runs killed and rerun ----------------------------------

WORKERS = 1
EXPECTED_FILES = 90  # write_sample's test split with fractions (0.8, 0.15): 5% of 1,797 digits


class LocalServer:
    """`python -m image_classifier.serve` on a fixed port, which a test may stop and start again."""

    def __init__(self, base_dir: Path):
        self.base_dir, self.port = base_dir, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.logs: list[Path] = []
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        """Start it; does not wait (see `ready`). Each start logs to its own file."""
        self.process, _, log = start(self.base_dir, WORKERS, port=self.port)
        self.logs.append(log.rename(self.base_dir / f"server-{len(self.logs) + 1}.log"))

    def ready(self) -> str:
        wait_for_answer(self.url, self.process, self.logs[-1], want=200, workers=WORKERS)
        return self.url

    def stop(self) -> None:
        if self.process.poll() is None:
            stop(self.process)


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    server = LocalServer(tmp_path_factory.mktemp("opt_ml"))
    shutil.copytree(model_dir, server.base_dir / "model")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def images(server, tmp_path_factory) -> Path:
    """The sample data's test folder, written while the server boots."""
    from image_classifier.datasets import write_sample

    root = tmp_path_factory.mktemp("sample")
    assert write_sample(root, fractions=(0.8, 0.15))["test"] == EXPECTED_FILES
    return root / "test"


@pytest.fixture(scope="module")
def expected(model_dir, images) -> dict[str, np.ndarray]:
    """Each file's class probabilities from the model in this process."""
    from image_classifier.images import open_image
    from image_classifier.serving.codec import Inputs
    from image_classifier.serving.predictor import Predictor

    keys, paths = zip(*transform.list_images(images))
    probabilities = Predictor.load(model_dir).predict(Inputs(images=[open_image(p.read_bytes()) for p in paths]))
    return dict(zip(keys, probabilities))


def start_transform(images: Path, output: Path, url: str, *args: str) -> subprocess.Popen:
    """The command as a user runs it; its stdout and stderr go to OUTPUT.out and OUTPUT.err."""
    src = str(Path(image_classifier.__file__).parents[1])  # this checkout's code, not an installed copy
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    with open(f"{output}.out", "w") as out, open(f"{output}.err", "w") as err:
        return subprocess.Popen([sys.executable, "-m", "image_classifier.cli", "transform", "--input", str(images),
                                 "--output", str(output), "--url", url, *args], stdout=out, stderr=err, env=env)


def wait_for_rows(output: Path, count: int, process: subprocess.Popen) -> int:
    """Until `output` has `count` rows or more (fails if the command ends first); the rows then."""
    deadline = time.monotonic() + 60
    while True:
        rows = len(read_results(output)) if output.exists() else 0
        if rows >= count:
            return rows
        assert process.poll() is None, Path(f"{output}.err").read_text()
        assert time.monotonic() < deadline, f"{rows} rows after 60 s"
        time.sleep(0.01)


def finish(process: subprocess.Popen, output: Path) -> tuple[int, str, str]:
    code = process.wait(timeout=180)
    return code, Path(f"{output}.out").read_text(), Path(f"{output}.err").read_text()


def assert_one_row_per_file(output: Path, expected: dict[str, np.ndarray]) -> None:
    """Every file once, each with the model's top-k (probabilities to float precision)."""
    rows = read_results(output)
    keys = [row["key"] for row in rows]
    assert len(keys) == len(set(keys)) == len(expected), "duplicate rows"
    assert set(keys) == set(expected), "missing or unknown rows"
    for row in rows:
        probabilities = expected[row["key"]]
        assert row["error"] is None
        assert [p["class_id"] for p in row["top_k"]] == list(np.argsort(-probabilities, kind="stable")[:5])
        np.testing.assert_allclose([p["probability"] for p in row["top_k"]],
                                   probabilities[[p["class_id"] for p in row["top_k"]]], rtol=1e-4)
        assert (row["label"], row["class_id"], row["probability"]) == tuple(row["top_k"][0].values())


@pytest.fixture(scope="module")
def restarted_run(server, images, tmp_path_factory):
    """A run at 2 requests at a time whose server gets SIGTERM after 10 rows, stays down 3 s
    (connections refused), then starts again on the same port."""
    output = tmp_path_factory.mktemp("restart") / "results.csv"
    process = start_transform(images, output, server.ready(), "--concurrency", "2")
    at_stop = wait_for_rows(output, 10, process)
    server.stop()
    time.sleep(3)
    at_restart = len(read_results(output))
    server.start()
    code, out, err = finish(process, output)
    return {"output": output, "code": code, "out": out, "err": err, "at_stop": at_stop, "at_restart": at_restart}


@pytest.mark.slow
def test_a_restart_mid_run_is_ridden_out(restarted_run, server, expected):
    assert restarted_run["code"] == 0, restarted_run["err"]
    # rows before the stop, and work left for the new server
    assert 10 <= restarted_run["at_stop"] <= restarted_run["at_restart"] < EXPECTED_FILES
    assert_one_row_per_file(restarted_run["output"], expected)
    # the client met the outage: connections closed by the stopping server or refused while it was down
    assert re.search(r"Retrying .* after connection broken by .*(Connection refused|RemoteDisconnected|"
                     r"Connection reset)", restarted_run["err"])
    retried = int(re.search(r"(\d+) answered after retries", restarted_run["out"]).group(1))
    assert retried >= 1
    first, second = (log.read_text(errors="replace") for log in server.logs[-2:])
    assert "Handling signal: term" in first
    answered_after = len(re.findall(r'"POST /invocations HTTP/1.1" 200', second))
    assert answered_after >= EXPECTED_FILES - restarted_run["at_restart"]


@pytest.mark.slow
def test_a_second_run_sends_nothing(restarted_run, images, tmp_path):
    output = restarted_run["output"]
    before = output.read_bytes()
    started = time.monotonic()
    process = start_transform(images, output, f"http://127.0.0.1:{free_port()}")  # nobody listens there
    code, out, err = finish(process, output)
    assert code == 0, err
    assert out.strip() == f"all {EXPECTED_FILES} files are already in {output}: nothing to do"
    assert output.read_bytes() == before
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_interrupted_and_killed_runs_resume(server, images, expected, tmp_path):
    output = tmp_path / "results.csv"
    url = server.ready()

    # Ctrl-C: the requests in flight are written, the CSV stays whole, exit 130
    process = start_transform(images, output, url, "--concurrency", "2")
    wait_for_rows(output, 5, process)
    process.send_signal(signal.SIGINT)
    code, out, err = finish(process, output)
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    interrupted = read_results(output)
    assert output.read_bytes().endswith(b"\n") and 5 <= len(interrupted) < EXPECTED_FILES

    # SIGKILL, then the part of a row a kill mid-write would leave
    process = start_transform(images, output, url, "--concurrency", "2")
    wait_for_rows(output, len(interrupted) + 5, process)
    process.kill()
    assert process.wait(timeout=30) == -signal.SIGKILL
    killed = read_results(output)
    assert len(killed) < EXPECTED_FILES
    with output.open("a") as f:
        f.write(f"{killed[-1]['key']},zero,0,0.5")

    code, out, err = finish(start_transform(images, output, url), output)
    assert code == 0, err
    assert f"of {EXPECTED_FILES} files ({len(killed)} already there)" in out
    assert_one_row_per_file(output, expected)
