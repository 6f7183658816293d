"""scripts/bench_debug.py: the configurations it runs, interleaved, and the ratios it reports."""

import json

from image_classifier.benchmarks import debug_overhead


def test_rounds_are_interleaved_and_ratios_are_to_off(monkeypatch, tmp_path, capsys):
    calls = []
    loop = {"off": 10.0, "debug": 15.0, "profile": 12.0, "debug+profile": 18.0}

    def fake_job(base_dir, data_dir, hyperparameters):
        name = base_dir.name.rsplit("-", 1)[0]
        calls.append(name)
        expected = debug_overhead.CONFIGURATIONS[name]
        assert {k: hyperparameters[k] for k in expected} == expected and hyperparameters["epochs"] == "1"
        return {"loop_seconds": loop[name] + len(calls) * 0.01, "job_seconds": 2 * loop[name]}

    monkeypatch.setattr(debug_overhead, "run_job", fake_job)
    out = tmp_path / "bench.json"
    assert debug_overhead.main(["--data", str(tmp_path), "--epochs", "1", "--rounds", "2", "--json", str(out)]) == 0
    assert calls == list(debug_overhead.CONFIGURATIONS) * 2  # round by round, not configuration by configuration
    results = json.loads(out.read_text())["results"]
    assert results["off"]["loop_ratio"] == 1.0
    assert results["debug"]["job_ratio"] == 1.5
    assert 1.49 < results["debug"]["loop_ratio"] < 1.51
    assert "debug+profile" in capsys.readouterr().out
