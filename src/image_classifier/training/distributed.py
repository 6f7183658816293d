"""Data-parallel training across processes and hosts: torchrun's workers, DDP, and the launch on SageMaker.

Two halves:

* In a worker (a process `torchrun` started: `RANK` and `WORLD_SIZE` set), `process_group()`
  joins the job's process group and the helpers make one ordinary training job out of many
  processes: `wrap` (DistributedDataParallel), `shard` (which part of each channel this rank
  reads), `agreed` (a stop flag every rank sees at the same step), `all_reduce_meter` (the
  whole dataset's figures), `settle_epoch`, `check_in_sync`, and `is_main` (only rank 0
  writes logs of metrics, checkpoints, metrics.json and the model). Outside a worker they
  are no-ops, so the single-process job runs exactly as before.
* In the container's `train` (not a worker), `plan` says whether the job needs more than one
  process (several hosts in resourceconfig.json, several GPUs, or the
  `sagemaker_mpi_num_of_processes_per_host` hyperparameter) and `launch` re-runs
  `image_classifier.train` under torchrun, built the way the sagemaker-training toolkit's
  torch_distributed runner builds it.

torchrun's environment variables (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
are documented at https://pytorch.org/docs/stable/elastic/run.html#environment-variables.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from image_classifier import artifacts
from image_classifier.sagemaker_env import LOCAL_RANK_ENV, RANK_ENV, WORLD_SIZE_ENV, SageMakerEnv, is_torchrun_worker
from image_classifier.training.failure import EXIT_SIGTERM, write_failure
from image_classifier.training.loop import Meter

logger = logging.getLogger(__name__)

# The rendezvous port of a multi-host job: the toolkit's torch_distributed.MASTER_PORT.
MASTER_PORT = 7777


# --- in a worker ------------------------------------------------------------------------------

def is_worker() -> bool:
    """True in a process torchrun started (`sagemaker_env.is_torchrun_worker`)."""
    return is_torchrun_worker()


def rank() -> int:
    """This process's global rank, 0 to world_size - 1 (0 outside torchrun)."""
    return int(os.environ.get(RANK_ENV, 0)) if is_worker() else 0


def world_size() -> int:
    """The number of processes of the job (1 outside torchrun)."""
    return int(os.environ.get(WORLD_SIZE_ENV, 1)) if is_worker() else 1


def local_rank() -> int:
    """This process's rank on its host: the GPU it uses (0 outside torchrun)."""
    return int(os.environ.get(LOCAL_RANK_ENV, 0)) if is_worker() else 0


def is_main() -> bool:
    """True in the one process that writes the job's outputs (global rank 0, or no torchrun)."""
    return rank() == 0


def active() -> bool:
    """True when this process is one of several in an initialised process group."""
    return world_size() > 1 and dist.is_available() and dist.is_initialized()


def device() -> torch.device:
    """`cuda:LOCAL_RANK` when there is a GPU (one GPU per process), else the CPU."""
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the job's process group for the duration (a no-op unless a worker of several).

    The backend is NCCL on GPUs and Gloo on the CPU; the rendezvous is torchrun's `env://`
    (MASTER_ADDR, MASTER_PORT). Ranks other than 0 log warnings and errors only, so the job's
    log reads like one process's.

    Raises:
        RuntimeError, ValueError: from `torch.distributed.init_process_group` (rendezvous timeout, ...).
    """
    if not is_worker() or world_size() == 1:
        yield
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if not is_main():
        logging.getLogger().setLevel(logging.WARNING)
    logger.info("process group: %d processes (%s)", world_size(), dist.get_backend())
    try:
        yield
    finally:
        dist.destroy_process_group()


def check_config(config) -> None:
    """Refuse what does not work across processes yet.

    Raises:
        ValueError: debug, debug-stop-on or profile in a job of several processes (their hooks,
            files and rules assume one process).
    """
    if active() and (config.debug or config.stop_on_rules or config.profile):
        raise ValueError(
            f"debug, debug-stop-on and profile need a single training process, and this job has "
            f"{world_size()}: set the hyperparameter sagemaker_mpi_num_of_processes_per_host=1 "
            f"and use one instance")


def shard() -> dict[str, int]:
    """`rank` and `world_size` keyword arguments for `data.make_loader` / `EpochSampler`."""
    return {"rank": rank(), "world_size": world_size()}


def per_rank_batch(batch_size: int) -> int:
    """One process's share of the `batch-size` hyperparameter, which stays the global batch.

    The pytorch/examples ImageNet script divides its batch size the same way, so that a
    tuned learning rate holds whatever the number of processes. When `batch_size` does not
    divide, the share is rounded down (at least 1) and a warning says so.
    """
    share = max(1, batch_size // world_size())
    if share * world_size() != batch_size:
        logger.warning("batch-size %d is not a multiple of the %d processes: each takes %d (global batch %d)",
                       batch_size, world_size(), share, share * world_size())
    return share


def wrap(model: nn.Module) -> nn.Module:
    """`model` in DistributedDataParallel when active, else `model` itself.

    Train through the wrapper; evaluate, checkpoint and save the unwrapped `model` (its
    state_dict has no `module.` prefix). DDP registers only parameters that require a
    gradient, so a frozen backbone (only the head trains) needs no `find_unused_parameters`.
    """
    if not active():
        return model
    ids = [local_rank()] if torch.cuda.is_available() else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def _comm_device() -> torch.device:
    return device() if dist.get_backend() == "nccl" else torch.device("cpu")


def agreed(flag: Callable[[], bool]) -> Callable[[], bool]:
    """`flag` made collective: true on every rank as soon as it is true on any.

    Every rank must call the result the same number of times (the training loop does, once
    a step: each rank runs the same number of steps). So a SIGTERM that reaches one rank
    stops them all after the same step instead of leaving the others waiting in DDP's
    all-reduce. Not active: `flag` itself.
    """
    if not active():
        return flag

    def any_rank() -> bool:
        mine = torch.tensor([1 if flag() else 0], dtype=torch.int32, device=_comm_device())
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)
        return bool(mine.item())

    return any_rank


def all_reduce_meter(meter: Meter) -> Meter:
    """The job's Meter: the ranks' sums added (loss_sum, correct, count); steps and seconds, the most.

    Every rank gets the same figures (float64 sums, identical on all ranks). Not active: `meter`.
    """
    if not active():
        return meter
    sums = torch.tensor([meter.loss_sum, meter.correct, meter.count], dtype=torch.float64, device=_comm_device())
    most = torch.tensor([meter.steps, meter.seconds], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(sums)
    dist.all_reduce(most, op=dist.ReduceOp.MAX)
    loss_sum, correct, count = sums.tolist()
    steps, seconds = most.tolist()
    return Meter(loss_sum=loss_sum, correct=round(correct), count=round(count), steps=int(steps),
                 seconds=seconds)


def gather_arrays(*arrays: np.ndarray) -> tuple[np.ndarray, ...]:
    """Each array concatenated over the ranks, in rank order (every rank gets them). Not active: `arrays`.

    For an evaluation pass's outputs (a channel's shards of unequal length: whole rows are
    sent as objects, through the backend's device).
    """
    if not active():
        return arrays
    gathered: list[tuple[np.ndarray, ...] | None] = [None] * world_size()
    dist.all_gather_object(gathered, arrays)
    shards = [shard for shard in gathered if len(shard[0])] or gathered[:1]  # a rank may have had no items
    return tuple(np.concatenate([shard[i] for shard in shards]) for i in range(len(arrays)))


def local_meter(saved: dict) -> dict:
    """The Meter state a rank resumes an epoch with: the saved (job-wide) one on rank 0, empty elsewhere.

    A checkpoint holds the job's Meter (`all_reduce_meter`); summing it again at the end of
    the epoch must count it once.
    """
    return saved if is_main() else {}


def settle_epoch(model: nn.Module, meter: Meter) -> Meter:
    """End a training epoch on every rank alike: rank 0's buffers everywhere, the job's Meter.

    DDP broadcasts buffers (BatchNorm running statistics) from rank 0 at the start of each
    forward, so after the last step each rank still holds its own; broadcasting them now makes
    validation, the best weights and checkpoints the same on every rank. Not active: `meter`.
    """
    if not active():
        return meter
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=0)
    return all_reduce_meter(meter)


def check_in_sync(model: nn.Module) -> None:
    """Check that every rank holds the same weights; rank 0 logs each rank's digest.

    Raises:
        RuntimeError: the ranks' weights differ (a bug: data-parallel ranks must not diverge).
    """
    if not active():
        return
    digests: list[str | None] = [None] * world_size()
    dist.all_gather_object(digests, artifacts.state_digest(model.state_dict()))
    logger.info("final weights sha256 by rank: %s", " ".join(digests))
    if len(set(digests)) != 1:
        raise RuntimeError(f"the {world_size()} processes ended with different weights: {digests}")


# --- in the container's train: the launch -----------------------------------------------------

@dataclass(frozen=True)
class LaunchPlan:
    """How many processes where: one torchrun per host, `processes_per_host` workers each.

    Attributes:
        hosts: the training hosts, sorted; the first is the rendezvous master.
        current_host: this container's host, one of `hosts`.
        processes_per_host: workers per host (GPUs, or 1 on the CPU, unless the hyperparameter says).
    """

    hosts: tuple[str, ...]
    current_host: str
    processes_per_host: int

    @property
    def world_size(self) -> int:
        return len(self.hosts) * self.processes_per_host

    @property
    def node_rank(self) -> int:
        return self.hosts.index(self.current_host)

    def command(self, python: str = sys.executable) -> list[str]:
        """The torchrun command line that runs `image_classifier.train` in every worker.

        Built as the sagemaker-training toolkit's `TorchDistributedRunner._create_command`
        (sagemaker_training/torch_distributed.py) builds it: `--nnodes <hosts>
        --nproc_per_node <processes>`, and with several hosts `--master_addr <first host>
        --master_port 7777 --node_rank <index of this host>`. Two differences: torchrun runs
        as `python -m torch.distributed.run` (the same program, without relying on PATH), and
        a single host uses `--standalone` (a free local port, where the toolkit leaves torchrun's
        fixed default 29500). The entry is the module, not a script.
        """
        cmd = [python, "-m", "torch.distributed.run", "--nnodes", str(len(self.hosts)),
               "--nproc_per_node", str(self.processes_per_host)]
        if len(self.hosts) > 1:
            cmd += ["--master_addr", self.hosts[0], "--master_port", str(MASTER_PORT),
                    "--node_rank", str(self.node_rank)]
        else:
            cmd += ["--standalone"]
        return [*cmd, "-m", "image_classifier.train"]


def plan(env: SageMakerEnv, gpus: int | None = None) -> LaunchPlan:
    """The job's processes, from resourceconfig.json, the GPUs and the hyperparameters.

    Args:
        env: the container layout.
        gpus: GPUs on this host (default: `torch.cuda.device_count()`).

    Raises:
        ValueError: this host is not among the training hosts, or a bad hyperparameter
            (see `SageMakerEnv.distribution_hosts` and `processes_per_host`).
    """
    hosts = tuple(env.distribution_hosts())
    current = env.current_host()
    if current not in hosts:
        raise ValueError(f"this host ({current}) is not among the training hosts {list(hosts)}: check "
                         f"the sagemaker_distribution_instance_groups hyperparameter")
    gpus = torch.cuda.device_count() if gpus is None else gpus
    return LaunchPlan(hosts, current, env.processes_per_host() or max(gpus, 1))


def launch(env: SageMakerEnv, job: LaunchPlan) -> int:
    """Run the job under torchrun and wait; forward SIGTERM; return the exit code for `train`.

    torchrun passes SIGTERM on to the workers, which agree to stop (`agreed`), checkpoint and
    exit 143 (it kills them 30 s later if they have not). A worker that fails writes
    output/failure itself; when torchrun fails and none did (a worker killed, a rendezvous
    that never completed), this writes one.

    Returns:
        0 when every worker succeeded, 143 after a SIGTERM, else torchrun's exit code.
    """
    command = job.command()
    logger.info("starting %d training processes on host %s (%d of %d): %s", job.processes_per_host,
                job.current_host, job.node_rank + 1, len(job.hosts), " ".join(command))
    process = subprocess.Popen(command)
    terminated = []

    def forward(signum, frame):
        terminated.append(signum)
        process.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        code = process.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)
    if code != 0:  # a worker's reason, when one wrote it, is the cause: keep it
        write_failure(env, f"torchrun exited with code {code}: a training process on {job.current_host} failed "
                           f"or was killed ({job.world_size} processes on {len(job.hosts)} host(s)); see the job's log",
                      first=True)
    return EXIT_SIGTERM if terminated else code
