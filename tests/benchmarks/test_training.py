"""scripts/bench_training.py: the ways it runs, in order, on one cache; the step types it times."""

from image_classifier.benchmarks import training
from tests.conftest import write_digit_tree


def test_ways_run_in_order_and_only_the_cached_ones_share_a_cache(monkeypatch, tmp_path):
    seen = []

    def fake_job(base_dir, data_dir, hyperparameters, prepare=None):
        seen.append((base_dir.name, hyperparameters["feature-cache"], hyperparameters["augment"], prepare is not None))
        seconds = {"images": 100.0, "images+augment": 90.0, "cache-cold": 25.0, "cache-warm": 4.0}[base_dir.name]
        return {"loop_seconds": seconds / 2, "job_seconds": seconds, "valid_accuracy": 0.5, "test_accuracy": 0.5}

    monkeypatch.setattr(training, "run_job", fake_job)
    data = write_digit_tree(tmp_path / "data", 2, {"train": 3, "valid": 1, "test": 1})
    results = training.compare(data, tmp_path / "work", {**training.JOB, "epochs": "2"})
    assert seen == [("images", "off", "false", False), ("images+augment", "off", "true", False),
                    ("cache-cold", "on", "false", True), ("cache-warm", "on", "false", True)]
    assert results["cache cold"]["speed-up"] == 4.0 and results["cache warm"]["speed-up"] == 25.0
    assert results["images"]["images_per_second"] == 10 * 2 / 100.0  # 10 images, 2 epochs


def test_step_types_time_data_compute_and_the_head(tmp_path):
    data = write_digit_tree(tmp_path / "data", 2, {"train": 40, "valid": 4, "test": 4})
    job = {**training.JOB, "model": "resnet18", "image-size": "32", "batch-size": "4", "num-workers": "0"}
    figures = training.step_types(data, tmp_path / "work", job)
    assert set(figures) == {"data loading", "compute", "head on features"}
    assert all(value > 0 for value in figures.values())


def test_synthetic_set_is_an_image_folder_of_the_size_asked(tmp_path):
    counts = training.write_synthetic(tmp_path / "synthetic", 60, classes=3, size=32)
    assert sum(counts.values()) == 60 and all(counts.values())
    assert sorted(p.name for p in (tmp_path / "synthetic" / "train").iterdir()) == \
        ["001.class0", "002.class1", "003.class2"]
