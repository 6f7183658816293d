"""Batch scoring of a folder of images against a running model server (`image-classifier transform`).

The local counterpart of SageMaker Batch Transform: each image under a folder is POSTed to
`<url>/invocations`, as many at a time as the server's `/execution-parameters` says
(MaxConcurrentTransforms), and its top-k goes to a CSV, one row per file. The CSV is the
checkpoint: a rerun skips the files it holds, so a killed or failed run resumes when the same
command runs again. Requests that meet a 5xx or a connection error are retried with an
exponential backoff long enough to ride out a server restart (urllib3's `Retry`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm
from urllib3.util.retry import Retry

from image_classifier.serving import content_types
from image_classifier.serving.attributes import HEADER as CUSTOM_ATTRIBUTES_HEADER  # where the server reads top_k

logger = logging.getLogger(__name__)

COLUMNS = ("key", "label", "class_id", "probability", "top_k", "error")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})  # Pillow reads

DEFAULT_TOP_K = 5
DEFAULT_CONCURRENCY = 4  # requests at a time when the server has no /execution-parameters
# The model server takes ~5-20 s to come back after a restart (refusing connections, then
# answering 503 while it loads): the retries of one request wait 0, 1, 2, 4, 8, then 10 s each,
# 115 s in all for 15 retries (backoff_seconds), and obey a Retry-After header.
DEFAULT_RETRIES = 15
BACKOFF_FACTOR = 0.5    # seconds: the n-th retry waits BACKOFF_FACTOR × 2^(n-1), the first none
BACKOFF_MAX = 10.0      # seconds, the longest wait between two tries
RETRY_STATUSES = frozenset({500, 502, 503, 504})
CONNECT_TIMEOUT = 10.0  # seconds to open a connection
READ_TIMEOUT = 120.0    # seconds for an answer: twice the server's own request timeout (MODEL_SERVER_TIMEOUT)


# --- the results CSV -------------------------------------------------------------------

def _complete_rows(path: Path) -> tuple[list[dict[str, str]], int]:
    """The rows of a results CSV up to its last line break, and the bytes they take (header included).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: its first line is not the COLUMNS header (it is not a results CSV).
    """
    data = path.read_bytes()
    complete = data.rfind(b"\n") + 1  # a killed run may have left a partial last line
    reader = csv.reader(io.StringIO(data[:complete].decode("utf-8"), newline=""))
    header = next(reader, None)
    if header is None:
        return [], 0
    if tuple(header) != COLUMNS:
        raise ValueError(f"{path} is not a results CSV: its header is {','.join(header)!r}, "
                         f"not {','.join(COLUMNS)!r}")
    return [dict(zip(COLUMNS, row)) for row in reader], complete


class ResultsCsv:
    """A results CSV opened for appending: one row per file, with the COLUMNS.

    Opening cuts off a partial last line (left by a killed run), writes the header into a new
    or empty file and reads the keys already there into `done`. Each `append` flushes and
    fsyncs its row, so a kill loses at most the row being written. Write from one thread.

    Raises (on opening):
        ValueError: the file is not a results CSV (another header).
        OSError: it cannot be read or written.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        rows, complete = [], 0
        if self.path.exists():
            rows, complete = _complete_rows(self.path)
            os.truncate(self.path, complete)
        self.done: set[str] = {row["key"] for row in rows}
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115  (open until close())
        self._writer = csv.writer(self._file, lineterminator="\n")
        if complete == 0:
            self._write(COLUMNS)

    def append(self, key: str, predictions: list[dict] | None, error: str | None = None) -> None:
        """Write the row of `key`: the top-1 of `predictions` (most probable first) and all of
        them as JSON in `top_k`, or empty fields and the `error` (made one line)."""
        top = predictions[0] if predictions else {}
        self._write((key, top.get("label", ""), top.get("class_id", ""), top.get("probability", ""),
                     "" if predictions is None else json.dumps(predictions, separators=(",", ":")),
                     " ".join((error or "").split())))
        self.done.add(key)

    def _write(self, row) -> None:
        self._writer.writerow(row)
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> ResultsCsv:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


_FIELD_TYPES = {"class_id": int, "probability": float, "top_k": json.loads}


def read_results(path: Path) -> list[dict]:
    """The complete rows of a results CSV, in file order, as dicts of COLUMNS: `class_id` an
    int, `probability` a float, `top_k` the list of predictions; empty fields are None.

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: it is not a results CSV.
    """
    rows, _ = _complete_rows(Path(path))
    return [{name: _FIELD_TYPES.get(name, str)(value) if value != "" else None for name, value in row.items()}
            for row in rows]


# --- talking to the server ---------------------------------------------------------------

def error_message(response: requests.Response) -> str:
    """The server's `{"error": ...}` message, else the body's text (e.g. a proxy's HTML page)."""
    try:
        return str(response.json().get("error", response.text))
    except (ValueError, AttributeError):  # not JSON, or JSON but not an object
        return response.text


def retry_policy(retries: int) -> Retry:
    """Retry a request `retries` times on a connection error (refused, reset, closed by the
    server), a read timeout or a 5xx in RETRY_STATUSES, POST included (scoring an image twice
    does no harm), after the backoff of BACKOFF_FACTOR and BACKOFF_MAX or a Retry-After header.
    The last answer is returned, not raised."""
    return Retry(total=retries, allowed_methods=frozenset({"GET", "POST"}), status_forcelist=RETRY_STATUSES,
                 backoff_factor=BACKOFF_FACTOR, backoff_max=BACKOFF_MAX, respect_retry_after_header=True,
                 raise_on_status=False)


def backoff_seconds(retries: int) -> float:
    """Seconds a request waits in all over `retries` retries (no Retry-After header)."""
    return sum(min(BACKOFF_MAX, BACKOFF_FACTOR * 2 ** (n - 1)) for n in range(2, retries + 1))


class _Sessions:
    """One retrying `requests.Session` per thread: requests does not promise a Session is thread-safe."""

    def __init__(self, retries: int):
        self._adapter_retry = retry_policy(retries)
        self._local = threading.local()
        self._all: list[requests.Session] = []
        self._lock = threading.Lock()

    def get(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
            for scheme in ("http://", "https://"):
                session.mount(scheme, HTTPAdapter(max_retries=self._adapter_retry))
            with self._lock:
                self._all.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._all:
                session.close()


def server_limits(url: str) -> tuple[int | None, int | None]:
    """(MaxConcurrentTransforms, MaxPayloadInMB × 1,000,000 bytes) from the server's
    `GET <url>/execution-parameters`, which SageMaker Batch Transform asks too; None for a
    value the server does not give, (None, None) when it does not answer (one try)."""
    try:
        response = requests.get(f"{url}/execution-parameters", timeout=(CONNECT_TIMEOUT, READ_TIMEOUT))
        response.raise_for_status()
        document = response.json()
        concurrency, payload_mb = document.get("MaxConcurrentTransforms"), document.get("MaxPayloadInMB")
    except (requests.RequestException, ValueError, AttributeError) as exc:  # AttributeError: JSON, not an object
        logger.info("no execution parameters from %s (%s)", url, exc)
        return None, None
    return (int(concurrency) if isinstance(concurrency, (int, float)) and concurrency >= 1 else None,
            int(payload_mb * 1_000_000) if isinstance(payload_mb, (int, float)) and payload_mb > 0 else None)


@dataclass
class Outcome:
    """What came of one file: `predictions` (a row), `error` (a row without predictions: a 4xx
    answer or a local refusal), or `failure` (no row: a 5xx or connection error after every retry)."""

    key: str
    predictions: list[dict] | None = None
    error: str | None = None
    failure: str | None = None
    retried: bool = False  # the answer came after one retry or more


def score_file(session: requests.Session, url: str, key: str, path: Path, top_k: int,
               max_payload: int | None) -> Outcome:
    """POST the file at `path` to `<url>/invocations` as `application/x-image` and return its
    Outcome; a file over `max_payload` bytes is refused without a request. Raises nothing."""
    try:
        size = path.stat().st_size
        if max_payload is not None and size > max_payload:
            return Outcome(key, error=f"refused without a request: {size:,} bytes, over the server's "
                                      f"MaxPayloadInMB ({max_payload:,} bytes)")
        body = path.read_bytes()
    except OSError as exc:
        return Outcome(key, error=f"cannot read the file: {exc.strerror or exc}")
    try:
        response = session.post(f"{url}/invocations", data=body, timeout=(CONNECT_TIMEOUT, READ_TIMEOUT),
                                allow_redirects=False,
                                headers={"Content-Type": content_types.X_IMAGE, "Accept": content_types.JSON,
                                         CUSTOM_ATTRIBUTES_HEADER: f"top_k={top_k}"})
    except requests.RequestException as exc:
        return Outcome(key, failure=str(exc))
    retried = bool(getattr(response.raw, "retries", None) and response.raw.retries.history)
    status = response.status_code
    if 400 <= status < 500 and status != 429:  # final: the same file gets the same answer (429: "later")
        return Outcome(key, error=f"{status}: {error_message(response)}", retried=retried)
    if status != 200:
        return Outcome(key, failure=f"{status}: {error_message(response)}", retried=retried)
    try:
        return Outcome(key, predictions=list(response.json()["predictions"]), retried=retried)
    except (ValueError, KeyError, TypeError) as exc:
        return Outcome(key, failure=f"an answer without predictions ({exc!r}): {response.text[:200]}")


# --- the command --------------------------------------------------------------------------

@dataclass
class Summary:
    """What a `transform` run did, in files (seconds for `seconds`)."""

    files: int                 # images under the input folder
    skipped: int = 0           # already in the CSV: not sent
    ok: int = 0                # rows with predictions
    refused: int = 0           # rows with an error: a 4xx answer, too large, unreadable
    failed: int = 0            # no row: a 5xx or connection error after every retry
    retried: int = 0           # answered after one retry or more
    concurrency: int = 0       # requests at a time
    seconds: float = 0.0
    interrupted: bool = False  # Ctrl-C: the requests in flight were written, the rest not sent


def list_images(root: Path) -> list[tuple[str, Path]]:
    """(key, path) of each file under `root` with a suffix in IMAGE_SUFFIXES (any case), sorted
    by key: its path relative to `root` in POSIX form.

    Raises:
        ValueError: `root` is not a folder, or holds no image.
    """
    if not root.is_dir():
        raise ValueError(f"input {root} is not a folder")
    images = sorted((path.relative_to(root).as_posix(), path) for path in root.rglob("*")
                    if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not images:
        raise ValueError(f"no images under {root} (suffixes {' '.join(sorted(IMAGE_SUFFIXES))})")
    return images


def _check_arguments(url: str, output: Path, concurrency: int | None, top_k: int, retries: int) -> str:
    """The server root without a trailing slash. Raises: ValueError: an argument is not usable."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must be http(s)://HOST[:PORT], got {url!r}")
    if output.is_dir():
        raise ValueError(f"output {output} is a folder: name the CSV file")
    for name, value, least in (("concurrency", concurrency, 1), ("top-k", top_k, 1), ("retries", retries, 0)):
        if value is not None and value < least:
            raise ValueError(f"--{name} must be at least {least}, got {value}")
    return url.rstrip("/")


def transform(input_dir: Path, output: Path, url: str, concurrency: int | None = None,
              top_k: int = DEFAULT_TOP_K, retries: int = DEFAULT_RETRIES, progress: bool | None = None) -> Summary:
    """Score the images under `input_dir` that `output` has no row for, appending their rows.

    When every file has a row already, it returns at once without contacting the server.

    Args:
        url: the model server's root, e.g. http://localhost:8080.
        concurrency: requests at a time; None: the server's MaxConcurrentTransforms, else
            DEFAULT_CONCURRENCY.
        top_k: predictions per file (the server gives at most its number of classes).
        retries: retries of each request (DEFAULT_RETRIES: backoff_seconds(15) = 115 s).
        progress: show a progress bar on stderr; None: when stderr is a terminal.

    Returns:
        the Summary; files with `failed` > 0 have no row, and a rerun retries them.

    Raises:
        ValueError: a bad argument (see list_images, _check_arguments), or `output` is not a
            results CSV.
        OSError: `output` cannot be written.
        KeyboardInterrupt: Ctrl-C before the requests start, or a second time while those in
            flight are waited for (the CSV is valid; their threads may still be retrying).
    """
    started = time.monotonic()
    url = _check_arguments(url, output, concurrency, top_k, retries)
    images = list_images(input_dir)
    output.parent.mkdir(parents=True, exist_ok=True)
    with ResultsCsv(output) as results:
        todo = [(key, path) for key, path in images if key not in results.done]
        summary = Summary(files=len(images), skipped=len(images) - len(todo))
        if todo:
            _score(todo, results, summary, url, concurrency, top_k, retries, progress)
    summary.seconds = time.monotonic() - started
    return summary


def _score(todo: list[tuple[str, Path]], results: ResultsCsv, summary: Summary, url: str,
           concurrency: int | None, top_k: int, retries: int, progress: bool | None) -> None:
    """Score `todo` in a thread pool, the main thread writing each answer's row as it comes."""
    server_concurrency, max_payload = server_limits(url)
    summary.concurrency = concurrency or server_concurrency or DEFAULT_CONCURRENCY
    logger.info("%d files to score, %d requests at a time, against %s", len(todo), summary.concurrency, url)
    sessions = _Sessions(retries)

    def job(key: str, path: Path) -> Outcome:
        return score_file(sessions.get(), url, key, path, top_k, max_payload)

    pool = ThreadPoolExecutor(summary.concurrency, thread_name_prefix="transform")
    bar = tqdm(total=len(todo), unit="file", desc=results.path.name, disable=None if progress is None else not progress)
    try:
        with bar, logging_redirect_tqdm():  # log lines above the bar
            pending: set[Future] = set()
            try:
                for key, path in todo:
                    pending.add(pool.submit(job, key, path))
                _write_rows(pending, results, summary, bar)
            except KeyboardInterrupt:
                summary.interrupted = True
                pool.shutdown(wait=False, cancel_futures=True)  # the files not started are not sent
                pending = {future for future in pending if not future.cancelled()}
                logger.warning("interrupted: waiting for the %d requests in flight "
                               "(Ctrl-C again to stop at once)", len(pending))
                _write_rows(pending, results, summary, bar)
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        sessions.close()


def _write_rows(pending: set[Future], results: ResultsCsv, summary: Summary, bar: tqdm) -> None:
    """Write each outcome's row as its future completes, removing it from `pending` first (a
    Ctrl-C in between loses the row, which a rerun redoes, rather than writing it twice)."""
    for future in as_completed(set(pending)):
        pending.discard(future)
        outcome: Outcome = future.result()
        summary.retried += outcome.retried
        if outcome.failure is not None:
            summary.failed += 1
            logger.warning("%s: failed after retries (no row): %s", outcome.key, outcome.failure)
        else:
            results.append(outcome.key, outcome.predictions, outcome.error)
            if outcome.error is None:
                summary.ok += 1
            else:
                summary.refused += 1
                logger.info("%s: %s", outcome.key, outcome.error)
        bar.set_postfix({"ok": summary.ok, "refused": summary.refused, "failed": summary.failed}, refresh=False)
        bar.update()
