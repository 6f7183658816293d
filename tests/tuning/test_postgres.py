"""Tuning across machines: one study on a real PostgreSQL server, shared by several `image-classifier tune`."""

import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import optuna
import pytest
import sqlalchemy

from image_classifier import cli
from image_classifier.tuning import report
from image_classifier.tuning import study as study_module
from tests.tuning import postgres
from tests.tuning.test_study import QUICK_SPACE, STATIC

# study.ask() outside optimize: Optuna warns that heartbeats are meant for Study.optimize; RDBStorage made here
pytestmark = [pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning"),
              pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")]  # heartbeat_interval


def new_database(server_url: str, name: str) -> str:
    """An empty database `name` on the server: its URL."""
    engine = sqlalchemy.create_engine(server_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    engine.dispose()
    return sqlalchemy.engine.make_url(server_url).set(database=name).render_as_string(hide_password=False)


def test_the_throwaway_server_says_why_initdb_failed(monkeypatch):
    with tempfile.TemporaryDirectory() as folder:  # not tmp_path: as root, the postgres user runs the script
        os.chmod(folder, 0o755)
        initdb = Path(folder) / "initdb"
        initdb.write_text("#!/bin/sh\necho 'initdb: no space left on device' >&2\nexit 1\n")
        initdb.chmod(0o755)
        monkeypatch.setattr(postgres, "bindir", lambda: Path(folder))
        with pytest.raises(RuntimeError, match="initdb failed: initdb: no space left on device"), \
                postgres.throwaway_server():
            pass


@pytest.mark.parametrize("url, words", [
    ("postgres:/nohost", "not a database URL"),
    ("nosuchdatabase://u@h/db", "no driver for 'nosuchdatabase'"),
    ("postgresql+nosuchdriver://u@h/db", "no driver for 'postgresql+nosuchdriver'"),
])
def test_a_bad_storage_url_fails_before_any_trial(tiny_tree, tmp_path, url, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        study_module.tune(tiny_tree, tmp_path / "out", STATIC, storage=url)
    assert not (tmp_path / "out" / "trials").exists()


@pytest.mark.parametrize("url", ["postgresql+psycopg//tuner:s3cret@db/optuna", "postgres:/tuner:s3:cr/et@db"])
def test_a_url_that_cannot_be_parsed_is_named_without_its_password(tmp_path, url):
    with pytest.raises(ValueError, match="is not a database URL") as caught:
        study_module.make_storage(url, tmp_path)
    assert ":***@db" in str(caught.value) and "s3" not in str(caught.value)


@pytest.mark.parametrize("url", ["postgresql+psycopg://tuner@db:5432x/optuna",
                                 "postgresql+psycopg://tuner:s3@cr:et@db:5432/optuna"])  # the password's @ unquoted
def test_a_port_that_is_not_a_number_is_refused_on_one_line(tmp_path, url):
    with pytest.raises(ValueError, match="the port is not a number") as caught:
        study_module.make_storage(url, tmp_path)
    assert "\n" not in str(caught.value) and "invalid literal" not in str(caught.value)
    assert "s3" not in str(caught.value) and "cr:et" not in str(caught.value)


def test_a_postgresql_connection_gives_up_after_connect_timeout(postgres_url, tmp_path, monkeypatch):
    engines = []
    create_engine = sqlalchemy.create_engine
    monkeypatch.setattr(sqlalchemy, "create_engine", lambda *args, **kwargs: engines.append(kwargs) or
                        create_engine(*args, **kwargs))  # the schema lock's engine
    storage = study_module.make_storage(postgres_url, tmp_path)
    assert [e.get("connect_args") for e in engines] == [{"connect_timeout": study_module.CONNECT_TIMEOUT_SECONDS}]
    with storage.engine.connect() as connection:  # libpq's own parameters, on the storage's connections
        assert connection.connection.dbapi_connection.info.get_parameters()["connect_timeout"] == "10"
    with study_module.make_storage(f"{postgres_url}?connect_timeout=3", tmp_path).engine.connect() as connection:
        assert connection.connection.dbapi_connection.info.get_parameters()["connect_timeout"] == "3"


def test_an_unreachable_database_is_named_without_its_password(tiny_tree, tmp_path, capsys):
    closed = study_module.make_storage  # a port nothing listens on: 1 (tcpmux) on loopback
    url = "postgresql+psycopg://tuner:s3cret@127.0.0.1:1/optuna"
    with pytest.raises(ConnectionError, match="cannot open the study database") as caught:
        closed(url, tmp_path)
    assert "127.0.0.1:1/optuna" in str(caught.value) and "s3cret" not in str(caught.value)
    code = cli.main(["tune", "--data", str(tiny_tree), "--output", str(tmp_path / "out"), "--storage", url])
    err = capsys.readouterr().err
    assert code == 2 and "Connection refused" in err and "s3cret" not in err
    assert not (tmp_path / "out" / "trials").exists()


def test_workers_starting_at_once_on_an_empty_database_all_open_the_study(postgres_url, tmp_path):
    def open_study(url: str, start: threading.Barrier, errors: list) -> None:
        start.wait()
        try:  # as `tune` opens it: each worker its own storage, so its own connections
            optuna.create_study(storage=study_module.make_storage(url, tmp_path), study_name="s", load_if_exists=True)
        except Exception as exc:
            errors.append(exc)

    for round in range(3):  # without the schema lock, about one round in two failed (UniqueViolation)
        url, start, errors = new_database(postgres_url, f"empty{round}"), threading.Barrier(3), []
        workers = [threading.Thread(target=open_study, args=(url, start, errors)) for _ in range(3)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        assert [s.study_name for s in optuna.get_all_study_summaries(url)] == ["s"]


def test_waiting_ends_when_the_other_workers_trial_does(postgres_url, tmp_path):
    study = optuna.create_study(storage=study_module.make_storage(postgres_url, tmp_path), study_name="waits")
    other = study.ask()  # RUNNING, as another worker's trial
    finished = threading.Event()
    teller = threading.Timer(0.5, lambda: (study.tell(other, 1.0), finished.set()))
    teller.start()
    study_module.wait_for_other_workers(study, threading.Event(), poll_seconds=0.05)
    assert finished.is_set()
    assert study.trials[0].state == optuna.trial.TrialState.COMPLETE


class BetweenLooks(threading.Event):
    """A stop event that is never set; its waits (the pauses between two looks) run `steps`, one each."""

    def __init__(self, steps):
        super().__init__()
        self.steps = list(steps)

    def wait(self, timeout=None):
        if self.steps:
            self.steps.pop(0)()
        return False


def test_waiting_outlasts_another_worker_between_its_trials(postgres_url, tmp_path):
    study = optuna.create_study(storage=study_module.make_storage(postgres_url, tmp_path), study_name="between")
    study.tell(study.ask(), 0.5)  # the other worker's first trial ended, its next not yet asked
    asked = []
    looks = BetweenLooks([lambda: study.tell(study.ask(), 0.75),  # a whole trial between two looks
                          lambda: asked.append(study.ask()), lambda: study.tell(asked[0], 1.0)])
    study_module.wait_for_other_workers(study, looks, poll_seconds=0)
    assert looks.steps == []
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 3


def test_a_dead_workers_trial_fails_once_its_heartbeat_is_stale(postgres_url):
    storage = optuna.storages.RDBStorage(postgres_url, heartbeat_interval=1, grace_period=1)
    study = optuna.create_study(storage=storage, study_name="dead")
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # its worker's last sign of life
    study_module.wait_for_other_workers(study, threading.Event(), poll_seconds=0.2)
    assert study.trials[0].state == optuna.trial.TrialState.FAIL


def test_ctrl_c_stops_the_wait(postgres_url, tmp_path):
    study = optuna.create_study(storage=study_module.make_storage(postgres_url, tmp_path), study_name="ctrl-c")
    study.ask()
    stopping = threading.Event()
    stopping.set()
    study_module.wait_for_other_workers(study, stopping, poll_seconds=60)
    assert study.trials[0].state == optuna.trial.TrialState.RUNNING


def test_of_equal_values_the_lowest_numbered_trial_is_best():
    study = optuna.create_study(direction="maximize")
    study.tell(study.ask(), 0.5)
    first, second = study.ask(), study.ask()
    study.tell(second, 1.0)  # the later trial ends first ...
    study.tell(first, 1.0)   # ... and the earlier one ties it
    assert study.best_trial.number == second.number  # Optuna's choice, here: the first told
    assert report.best_trial(study).number == first.number


@pytest.mark.slow
def test_two_tune_processes_share_one_study(tiny_tree, tmp_path, postgres_url):
    url = new_database(postgres_url, "shared")
    outputs = [tmp_path / f"machine{i}" for i in range(2)]  # each worker its own folder, as on two machines
    logs = [(tmp_path / f"machine{i}.out", tmp_path / f"machine{i}.err") for i in range(2)]  # files: no pipe fills
    workers = []
    try:
        for i, (out, (stdout, stderr)) in enumerate(zip(outputs, logs)):
            with stdout.open("w") as out_file, stderr.open("w") as err_file:
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "image_classifier.cli", "tune", "--data", str(tiny_tree), "--output",
                     str(out), "--storage", url, "--study-name", "shared", "--max-trials", "2", "--parallel", "1",
                     "--pruner", "none", "--seed", str(i), "--search-space", QUICK_SPACE,
                     *[f"--hyperparameter={k}={v}" for k, v in STATIC.items()]], stdout=out_file, stderr=err_file))
        codes = [worker.wait(timeout=600) for worker in workers]
    finally:
        for worker in workers:  # a failure or a timeout above leaves no worker running
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    assert codes == [0, 0], [stderr.read_text()[-3000:] for _, stderr in logs]
    answers = [stdout.read_text() for stdout, _ in logs]

    study = optuna.load_study(study_name="shared", storage=url)
    # trial numbers unique, and the counts add up: 2 + 2, each worker its own two
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    ran = [sorted(p.name for p in (out / "trials").iterdir()) for out in outputs]
    assert [len(names) for names in ran] == [2, 2] and not set(ran[0]) & set(ran[1])
    assert sorted(ran[0] + ran[1]) == sorted(t.user_attrs["training_job"] for t in study.trials)
    # both report the whole study and the same best trial
    best = [json.loads((out / report.BEST_FILE).read_text()) for out in outputs]
    assert best[0] == best[1] and best[0]["training_job"] == f"shared-{report.best_trial(study).number:03d}"
    best_lines = [next(line for line in out.splitlines() if line.startswith("best: ")) for out in answers]
    assert best_lines[0].split(";")[0] == best_lines[1].split(";")[0]
    for out in outputs:
        assert (out / report.TRIALS_TABLE).read_text().count(" COMPLETE ") == 4


def test_the_summary_names_the_machine_that_holds_the_best_model(tmp_path, monkeypatch, capsys):
    study = optuna.create_study(direction="maximize", study_name="shared")
    for number, host in enumerate(("worker-1", "worker-2")):
        study.add_trial(optuna.trial.create_trial(value=0.5 * (number + 1), user_attrs={
            "training_job": f"shared-{number:03d}", "trial_dir": f"/srv/tuning/trials/shared-{number:03d}",
            "host": host, "hyperparameters": {}}))
    monkeypatch.setattr(study_module, "tune", lambda *args, **kwargs: (
        study, {"table": "", "best": report.best_hyperparameters(study, "valid_accuracy")}, False))
    assert cli.main(["tune", "--data", str(tmp_path), "--output", str(tmp_path)]) == 0
    assert "model in /srv/tuning/trials/shared-001/model on worker-2" in capsys.readouterr().out
