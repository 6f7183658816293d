"""The front end (serving/front.py): nginx in front of gunicorn, against hostile and careless clients.

- 100 clients stalled mid-body, or mid-header, while `/ping` answers 200 within a second each
  time and a photo is answered right; nginx drops those stalled mid-body after its timeout;
- SIGTERM lets a request in flight through nginx finish, and nothing new is accepted;
- nginx or gunicorn dying stops the server, non-zero, with a log line naming it;
- without nginx on PATH, gunicorn alone serves, with a warning, and still answers urllib's
  oversized body with the 413.

These need nginx (the serving image and CI have it): where it is missing they fail, they do not skip.
The 413 a client that sends all before reading gets (urllib) is tested in test_server.py.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
import requests

from image_classifier.sagemaker_env import ServerSettings
from image_classifier.serving import front
from tests.serving.images import china_jpeg, invocation_headers, load_npy
from tests.serving.servers import Server, children, start, stop, wait_for_answer

STALLED = 100
NPY = "application/x-npy"


def nginx() -> str:
    path = front.find_nginx()
    assert path, "nginx is not on PATH: install it (apt-get install nginx); the serving image and CI have it"
    return path


# --- the configuration -----------------------------------------------------------------

def test_nginx_accepts_the_configuration(tmp_path):
    settings = ServerSettings(port=18080, max_payload_mb=2.5, model_server_timeout=0)
    conf = tmp_path / "nginx.conf"
    conf.write_text(front.nginx_conf(settings, tmp_path, tmp_path / "gunicorn.sock"))
    checked = subprocess.run([nginx(), "-t", "-e", "stderr", "-p", str(tmp_path), "-c", str(conf)],
                             capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr
    text = conf.read_text()
    assert "client_max_body_size 2500000;" in text
    assert f"proxy_read_timeout {front.NO_TIMEOUT_SECONDS}s;" in text


def test_the_413_is_the_apps(client):
    """nginx's 413 carries the app's JSON error body, byte for byte but the trailing newline."""
    app_413 = client.post("/invocations", data=b"\0" * (client.application.config["MAX_CONTENT_LENGTH"] + 1),
                          content_type=NPY)
    assert app_413.status_code == 413
    assert json.loads(front.too_large_body()) == app_413.get_json()
    assert front.too_large_body() == app_413.get_data(as_text=True).strip()


# --- a real server behind nginx --------------------------------------------------------

@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    nginx()
    base_dir = tmp_path_factory.mktemp("opt_ml")
    shutil.copytree(model_dir, base_dir / "model")
    process, url, log = start(base_dir, 1)
    try:
        yield Server(url, process, log, wait_for_answer(url, process, log, want=200, workers=1))
    finally:
        if process.poll() is None:
            assert stop(process) < 30
            assert process.returncode == 0, log.read_text(errors="replace")[-3000:]


def open_stalled(url: str, head: bytes, count: int = STALLED) -> list[socket.socket]:
    """`count` connections that each send `head` and then nothing."""
    parsed = urlparse(url)
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((parsed.hostname, parsed.port), timeout=5)
        sock.sendall(head)
        sockets.append(sock)
    return sockets


def photo_probabilities(url: str) -> np.ndarray:
    response = requests.post(f"{url}/invocations", data=china_jpeg(), headers=invocation_headers("image/jpeg", NPY),
                             timeout=30)
    assert response.status_code == 200, response.text
    return load_npy(response.content)


def check_served_while_stalled(server: Server, head: bytes, dropped: bool = False) -> None:
    """With STALLED connections each stuck after `head`: /ping answers 200 within 1 s, ten times over
    3 s, and a photo gets the answer it gets on an idle server; if `dropped`, nginx then drops the
    stalled ones within its timeout."""
    expected = photo_probabilities(server.url)
    stalled = open_stalled(server.url, head)
    try:
        for _ in range(10):
            started = time.monotonic()
            response = requests.get(f"{server.url}/ping", timeout=1)
            assert response.status_code == 200 and time.monotonic() - started < 1
            time.sleep(0.3)
        np.testing.assert_allclose(photo_probabilities(server.url), expected, rtol=1e-5, atol=1e-7)
        # nginx drops each after client_header_timeout / client_body_timeout (with a 408 or nothing)
        for sock in stalled if dropped else []:
            sock.settimeout(front.CLIENT_TIMEOUT_SECONDS + 10)
            try:
                answer = sock.recv(65536)
            except ConnectionResetError:
                answer = b""
            assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer[:200]
    finally:
        for sock in stalled:
            sock.close()
    assert server.process.poll() is None and len(children(server.process.pid)) == 1


@pytest.mark.slow
def test_clients_stalled_mid_body_starve_nothing(server):
    body = china_jpeg()
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nAccept: {NPY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body[: len(body) // 2]
    check_served_while_stalled(server, head, dropped=True)


@pytest.mark.slow
def test_clients_stalled_mid_header_starve_nothing(server):
    check_served_while_stalled(server, b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty")


# --- stopping --------------------------------------------------------------------------

def start_served(model_dir, tmp_path, **env) -> Server:
    shutil.copytree(model_dir, tmp_path / "model")
    process, url, log = start(tmp_path, 1, **env)
    return Server(url, process, log, wait_for_answer(url, process, log, want=200, workers=1))


@pytest.mark.slow
def test_sigterm_drains_a_request_in_flight_through_nginx(model_dir, tmp_path):
    nginx()
    server = start_served(model_dir, tmp_path)
    expected = photo_probabilities(server.url)
    body = china_jpeg()
    head = (f"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nAccept: {NPY}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    [in_flight] = open_stalled(server.url, head + body[:1000], 1)
    time.sleep(0.5)
    started = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    time.sleep(1)
    with pytest.raises(requests.ConnectionError):  # nginx no longer listens
        requests.get(f"{server.url}/ping", timeout=5)
    in_flight.settimeout(30)
    in_flight.sendall(body[1000:])
    response = b""
    while chunk := in_flight.recv(65536):
        response += chunk
    in_flight.close()
    head, _, content = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), response[:300]
    np.testing.assert_allclose(load_npy(content), expected, rtol=1e-5, atol=1e-7)
    server.process.wait(timeout=30)
    assert time.monotonic() - started < 30
    assert server.process.returncode == 0, server.log_text()[-3000:]
    assert "Shutting down: Master" in server.log_text()


def front_children(pid: int) -> dict[str, int]:
    """The server's two children, by name: nginx's master and gunicorn's."""
    named = {}
    for child in subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split():
        cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        named["gunicorn" if b"gunicorn" in cmdline else "nginx"] = int(child)
    return named


@pytest.mark.slow
@pytest.mark.parametrize("victim", ["nginx", "gunicorn"])
def test_either_child_dying_stops_the_server(model_dir, tmp_path, victim):
    nginx()
    server = start_served(model_dir, tmp_path)
    named = front_children(server.process.pid)
    assert set(named) == {"nginx", "gunicorn"}
    os.kill(named[victim], signal.SIGKILL)
    server.process.wait(timeout=30)
    assert server.process.returncode != 0
    assert f"{victim} exited with" in server.log_text()
    with pytest.raises(requests.ConnectionError):  # nothing is left on the port (no orphaned nginx worker)
        requests.get(f"{server.url}/ping", timeout=5)
    assert all(not Path(f"/proc/{pid}").exists() for pid in named.values())


@pytest.mark.slow
def test_without_nginx_gunicorn_serves_alone_with_a_warning(model_dir, tmp_path):
    nginx()
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if not Path(d, front.NGINX).exists())
    server = start_served(model_dir, tmp_path, PATH=path, SAGEMAKER_MAX_PAYLOAD_IN_MB="1")
    try:
        assert "nginx is not on PATH" in server.log_text() and "apt-get install nginx" in server.log_text()
        assert b"gunicorn" in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
        assert requests.get(f"{server.url}/ping", timeout=5).status_code == 200
        # gunicorn's own second line (serving/parser.discard_body): urllib, 20x the limit (more than
        # loopback's socket buffers hold), gets the 413
        request = urllib.request.Request(f"{server.url}/invocations", data=b"\0" * 20_000_000, method="POST",
                                         headers={"Content-Type": NPY})
        with pytest.raises(urllib.error.HTTPError) as raised:
            urllib.request.urlopen(request, timeout=60)
        assert raised.value.code == 413 and raised.value.headers["Connection"] == "close"
        assert raised.value.read().decode().strip() == front.too_large_body()
    finally:
        assert stop(server.process) < 30


@pytest.mark.parametrize("route", ["/ping", "/invocations", "/execution-parameters"])
def test_a_trace_nginx_refuses_says_what_the_route_allows_as_flask_does(server, route):
    """nginx answers TRACE itself; its 405 carries the same `Allow` as the app's own 405 (RFC 9110
    §15.5.6), found by the schemathesis run (tests/serving/test_openapi.py)."""
    trace = requests.request("TRACE", f"{server.url}{route}", timeout=10)
    put = requests.put(f"{server.url}{route}", timeout=10)
    assert trace.status_code == put.status_code == 405
    assert set(trace.headers["Allow"].split(", ")) == set(put.headers["Allow"].split(", ")) != {""}
    assert trace.headers["Content-Type"] == "application/json" and "error" in trace.json()
