"""Data-parallel training: sharded sampling, the torchrun launch plan, and a real 2-process job (gloo, CPU)."""

from __future__ import annotations

import contextlib
import json
import re
import signal
import subprocess

import psutil
import pytest
import torch
from torch.utils.data import DistributedSampler

from image_classifier import artifacts
from image_classifier.evaluation import REPORT_DIR
from image_classifier.evaluation.metrics import macro_f1
from image_classifier.sagemaker_env import PROCESSES_PER_HOST_HP, SageMakerEnv
from image_classifier.training import data, distributed
from image_classifier.training.checkpoints import CHECKPOINT_FILE
from image_classifier.training.data import EpochSampler
from image_classifier.training.loop import Outputs, evaluate
from image_classifier.training.metrics import METRICS_FILE
from image_classifier.transforms import eval_transform
from tests.conftest import write_digit_tree
from tests.training.test_job import EPOCH_LINE, TEST_LINE, run_job, start_job

# --- the sharded EpochSampler -----------------------------------------------------------------

def _shard(n: int, world: int, rank: int, epoch: int = 3, start: int = 0, pad: bool = True,
           shuffle: bool = True) -> list[int]:
    sampler = EpochSampler(n, seed=7, shuffle=shuffle, rank=rank, world_size=world, pad=pad)
    sampler.set_epoch(epoch, start)
    items = list(sampler)
    assert len(items) == len(sampler)
    assert {e for e, _ in items} <= {epoch}
    return [i for _, i in items]


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (50, 3), (50, 4), (3, 4), (1, 2)])
def test_training_shards_are_those_of_torchs_distributed_sampler(n, world):
    shards = [_shard(n, world, r) for r in range(world)]
    assert len({len(s) for s in shards}) == 1  # every rank runs the same number of steps
    for rank, shard in enumerate(shards):
        reference = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=7)
        reference.set_epoch(3)
        assert shard == list(reference)
    permutation = _shard(n, 1, 0)
    covered = [i for j in range(len(shards[0])) for s in shards for i in s[j:j + 1]]  # interleaved back
    assert covered[:n] == permutation  # the padding repeats the head of the permutation
    assert set(covered) == set(range(n))


@pytest.mark.parametrize("n, world", [(10, 2), (11, 2), (50, 3), (3, 4)])
def test_evaluation_shards_are_disjoint_and_cover_the_channel(n, world):
    shards = [_shard(n, world, r, pad=False, shuffle=False) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


@pytest.mark.parametrize("start", [0, 1, 5, 6])
@pytest.mark.parametrize("pad", [True, False])
def test_a_shard_resumes_part_way(start, pad):
    for rank in range(2):
        full = _shard(11, 2, rank, pad=pad)
        assert _shard(11, 2, rank, start=start, pad=pad) == full[start:]
    assert _shard(11, 2, 1, pad=True) != _shard(11, 2, 1, epoch=4, pad=True)  # a new permutation each epoch


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2"):
        EpochSampler(10, seed=0, rank=2, world_size=2)


# --- the launch plan --------------------------------------------------------------------------

def _env(tmp_path, resource_config: dict | None = None, hyperparameters: dict | None = None,
         **environ) -> SageMakerEnv:
    env = SageMakerEnv.from_environ({"SAGEMAKER_BASE_DIR": str(tmp_path), **environ})
    env.config_dir.mkdir(parents=True, exist_ok=True)
    if resource_config is not None:
        env.resource_config_path.write_text(json.dumps(resource_config))
    env.hyperparameters_path.write_text(json.dumps(hyperparameters or {}))
    return env


def test_two_hosts_make_the_toolkits_torchrun_command(tmp_path):
    env = _env(tmp_path, {"current_host": "algo-2", "hosts": ["algo-2", "algo-1"], "network_interface_name": "eth0"})
    job = distributed.plan(env, gpus=4)
    assert job.world_size == 8 and job.node_rank == 1
    command = job.command("python")
    assert command[:3] == ["python", "-m", "torch.distributed.run"]
    options = " ".join(command[3:])
    assert options == ("--nnodes 2 --nproc_per_node 4 --master_addr algo-1 --master_port 7777 --node_rank 1 "
                       "-m image_classifier.train")


@pytest.mark.parametrize("gpus, hyperparameters, processes", [
    (0, {}, 1), (1, {}, 1), (8, {}, 8),
    (0, {PROCESSES_PER_HOST_HP: "2"}, 2), (8, {PROCESSES_PER_HOST_HP: json.dumps("1")}, 1),
])
def test_processes_per_host(tmp_path, gpus, hyperparameters, processes):
    env = _env(tmp_path, {"current_host": "algo-1", "hosts": ["algo-1"]}, hyperparameters)
    job = distributed.plan(env, gpus=gpus)
    assert job.processes_per_host == processes
    if processes > 1:
        assert "--standalone" in job.command() and "--master_addr" not in job.command()


def test_hosts_from_instance_groups_or_sm_hosts(tmp_path):
    groups = {"current_host": "algo-3", "hosts": ["algo-1", "algo-2", "algo-3"], "current_instance_group": "gpu",
              "instance_groups": [{"instance_group_name": "cpu", "hosts": ["algo-1"]},
                                  {"instance_group_name": "gpu", "hosts": ["algo-3", "algo-2"]}]}
    assert distributed.plan(_env(tmp_path, groups), gpus=0).hosts == ("algo-2", "algo-3")
    env = _env(tmp_path, groups, {"sagemaker_distribution_instance_groups": json.dumps(["cpu"])})
    with pytest.raises(ValueError, match=r"algo-3.*not among"):
        distributed.plan(env, gpus=0)
    env = _env(tmp_path / "sm", None, SM_HOSTS='["algo-2","algo-1"]', SM_CURRENT_HOST="algo-1")
    assert distributed.plan(env, gpus=0).hosts == ("algo-1", "algo-2")
    assert distributed.plan(_env(tmp_path / "none"), gpus=0).world_size == 1


def test_a_bad_processes_per_host_is_named(tmp_path):
    env = _env(tmp_path, {"current_host": "algo-1", "hosts": ["algo-1"]}, {PROCESSES_PER_HOST_HP: "two"})
    with pytest.raises(ValueError, match=PROCESSES_PER_HOST_HP):
        distributed.plan(env, gpus=0)


# --- a real job of two processes --------------------------------------------------------------

DIGESTS = re.compile(r"final weights sha256 by rank: (.+)")


def _evaluate_alone(model_dir, channel, outputs: Outputs | None = None) -> dict[str, float]:
    """The saved model's figures on a whole channel, in this one process (its predictions into `outputs`)."""
    state_dict, spec = artifacts.load_model(model_dir)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    dataset = data.ImageFolderChannel(channel, spec.class_names, eval_transform(spec.image_size))
    loader = data.make_loader(dataset, 10, 0, train=False, seed=0, pin_memory=False)
    return evaluate(model, loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"), None, outputs=outputs)


@pytest.mark.slow
@pytest.mark.parametrize("cached", [False, True], ids=["images", "feature-cache"])
def test_two_processes_train_one_job(opt_ml, digit_tree, cached):
    extra = {"freeze": "backbone", "augment": False, "lr": 0.01} if cached else {}
    env = opt_ml(**{PROCESSES_PER_HOST_HP: 2}, **extra)

    code, log = run_job(env, timeout=180)

    assert code == 0, log
    assert "--nproc_per_node 2 --standalone" in log
    # the ranks share the cache: one computes each channel's features, the other waits and reads
    # them (rank 0 logs which it did; the other rank logs warnings only)
    assert log.count(": computed") + log.count("features from the cache") == (3 if cached else 0), log
    assert len(list((env.checkpoint_dir / "feature-cache").glob("*.pt"))) == (3 if cached else 0)
    # one job's log: one metric line per epoch and one test line, not one per process
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(log)] == [1, 2], log
    assert len(TEST_LINE.findall(log)) == 1
    # both ranks ended with the weights that were saved
    saved, spec = artifacts.load_model(env.model_dir)
    assert "module." not in " ".join(saved)
    digests = DIGESTS.search(log).group(1).split()
    assert digests == [artifacts.state_digest(saved)] * 2
    # one job's outputs, with figures of the whole dataset
    metrics = json.loads((env.output_data_dir / METRICS_FILE).read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    for epoch in metrics["epochs"]:  # 72 images, 2 x 4 steps of 8 a rank: 64 (rank 0 alone: 32)
        assert round(epoch["images_per_second"] * epoch["epoch_seconds"]) == 64
    best = metrics["epochs"][metrics["best_epoch"] - 1]
    valid_outputs, test_outputs = Outputs(), Outputs()
    valid = _evaluate_alone(env.model_dir, digit_tree / "valid", valid_outputs)
    assert (best["valid_loss"], best["valid_accuracy"]) == pytest.approx((valid["loss"], valid["accuracy"]), rel=1e-5)
    probabilities, targets = valid_outputs.arrays()
    assert best["valid_f1"] == pytest.approx(macro_f1(probabilities.argmax(axis=1), targets), rel=1e-5)
    test = _evaluate_alone(env.model_dir, digit_tree / "test", test_outputs)
    assert (metrics["test_loss"], metrics["test_accuracy"]) == pytest.approx((test["loss"], test["accuracy"]),
                                                                             rel=1e-5)
    probabilities, targets = test_outputs.arrays()
    assert metrics["test_f1"] == pytest.approx(macro_f1(probabilities.argmax(axis=1), targets), rel=1e-5)
    # the report: rank 0's, of both ranks' test predictions
    evaluation = json.loads((env.output_data_dir / REPORT_DIR / "metrics.json").read_text())
    predicted = probabilities.argmax(axis=1)
    confusion = [[int(((targets == t) & (predicted == p)).sum()) for p in range(3)] for t in range(3)]
    assert evaluation["images"] == 24 and evaluation["confusion_matrix"] == confusion
    assert spec.class_names == ["001.zero", "002.one", "003.two"]
    assert (env.checkpoint_dir / CHECKPOINT_FILE).exists()
    assert not env.failure_path.exists()


STOPPED = re.compile(r"\[rank (\d)\] image_classifier\.train: stopped by SIGTERM in epoch (\d+) after step (\d+)")


def _worker(job: subprocess.Popen, rank: int) -> psutil.Process:
    """The training process of global `rank` under the job's torchrun."""
    for child in psutil.Process(job.pid).children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if child.environ().get("RANK") == str(rank):
                return child
    raise AssertionError(f"no worker of rank {rank} under {job.pid}")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_the_same_step_and_the_job_resumes(opt_ml, tmp_path):
    # 144 images: 9 steps of 8 a rank each epoch, so a SIGTERM after epoch 1 lands inside epoch 2
    tree = write_digit_tree(tmp_path / "data", 3, {"train": 48, "valid": 8, "test": 8})
    env = opt_ml(tree, epochs=3, **{PROCESSES_PER_HOST_HP: 2})
    job = start_job(env)
    lines = []
    for line in job.stdout:
        lines.append(line)
        if "epoch=1 " in line:
            _worker(job, 1).send_signal(signal.SIGTERM)
            break
    lines += job.stdout.readlines()
    code, log = job.wait(timeout=120), "".join(lines)

    assert code != 0, log
    stopped = {int(rank): (int(epoch), int(step)) for rank, epoch, step in STOPPED.findall(log)}
    assert stopped.keys() == {0, 1}, log  # rank 0 stopped too, rather than wait for rank 1 in all_reduce
    assert stopped[0] == stopped[1] and stopped[0][0] == 2 and stopped[0][1] > 0
    assert "SIGTERM" in env.failure_path.read_text()
    saved = torch.load(env.checkpoint_dir / CHECKPOINT_FILE, weights_only=True)
    assert (saved["job"]["epoch"], saved["job"]["step"]) == (1, stopped[0][1])
    assert saved["job"]["meter"]["count"] == 2 * 8 * stopped[0][1]  # both ranks' images

    code, log = run_job(env, timeout=180)

    assert code == 0, log
    assert "resuming from checkpoint" in log and not env.failure_path.exists()
    assert [int(m.group(1)) for m in EPOCH_LINE.finditer(log)] == [2, 3]
    metrics = json.loads((env.output_data_dir / METRICS_FILE).read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2, 3]
    epoch_2 = metrics["epochs"][1]  # counted once across the restart: 2 ranks x 9 steps x 8
    assert round(epoch_2["images_per_second"] * epoch_2["epoch_seconds"]) == 144
