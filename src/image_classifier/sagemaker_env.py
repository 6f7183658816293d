"""The SageMaker container layout (`/opt/ml`) and environment, read once into a frozen snapshot.

Paths follow the training contract in the SageMaker developer guide ("How Amazon SageMaker
provides training information", "Use checkpoints in Amazon SageMaker") and the hosting
contract ("Use your own inference code with hosting services"). `SAGEMAKER_BASE_DIR`
relocates the root, as the sagemaker-training toolkit does, so tests and local runs can lay
out a whole `/opt/ml` tree in any folder. The model server's environment variables are typed and
checked by `ServerSettings` (`SageMakerEnv.server`); docs/reference/environment.md lists them.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from image_classifier.runtime import Precision
from image_classifier.schema import Real, Whole, accepts, parse_word, setting, show

# Environment variable names.
logger = logging.getLogger(__name__)

BASE_DIR_ENV = "SAGEMAKER_BASE_DIR"
BIND_TO_PORT_ENV = "SAGEMAKER_BIND_TO_PORT"
MODEL_SERVER_WORKERS_ENV = "MODEL_SERVER_WORKERS"
MODEL_SERVER_TIMEOUT_ENV = "MODEL_SERVER_TIMEOUT"
# Set by SageMaker in Batch Transform; honoured for real-time endpoints too.
MAX_PAYLOAD_ENV = "SAGEMAKER_MAX_PAYLOAD_IN_MB"
MAX_CONCURRENT_TRANSFORMS_ENV = "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS"
BATCH_STRATEGY_ENV = "SAGEMAKER_BATCH_STRATEGY"
MAX_IMAGE_PIXELS_ENV = "MODEL_SERVER_MAX_IMAGE_PIXELS"
PRECISION_ENV = "MODEL_SERVER_PRECISION"      # fp32, bf16 or int8
RETIRED_ENV = {"MODEL_SERVER_TORCHSCRIPT": "the server runs OpenVINO now; MODEL_SERVER_PRECISION chooses its precision"}
THREADS_ENV = "MODEL_SERVER_THREADS"          # request threads per worker
MAX_BATCH_ENV = "MODEL_SERVER_MAX_BATCH"      # images in one batched forward pass
HYPERPARAMETERS_ENV = "SM_HPS"
HOSTS_ENV = "SM_HOSTS"
CURRENT_HOST_ENV = "SM_CURRENT_HOST"
# torchrun sets these in each worker process it starts (torch.distributed.run's documentation)
RANK_ENV, WORLD_SIZE_ENV, LOCAL_RANK_ENV = "RANK", "WORLD_SIZE", "LOCAL_RANK"
# SageMaker's own hyperparameters that shape a distributed job, as the toolkit reads them
# (sagemaker_training/params.py; runner.py uses the first for torch_distributed too).
PROCESSES_PER_HOST_HP = "sagemaker_mpi_num_of_processes_per_host"  # default: GPUs, or 1 without
DISTRIBUTION_GROUPS_HP = "sagemaker_distribution_instance_groups"  # heterogeneous clusters

DEFAULT_BASE_DIR = "/opt/ml"
# The training job's variables (the model server's are ServerSettings' fields): name -> (default,
# meaning), for docs/reference/environment.md.
LAYOUT_VARIABLES: dict[str, tuple[str, str]] = {
    BASE_DIR_ENV: (DEFAULT_BASE_DIR, "Root of the SageMaker layout. Relocates it, as the sagemaker-training "
                   "toolkit's variable does, so tests and local runs lay out a whole /opt/ml tree in any folder."),
    HYPERPARAMETERS_ENV: ("unset", "A JSON object of hyperparameters that adds to and overrides "
                          "hyperparameters.json (the sagemaker-training toolkit's name): a local run (docker "
                          "compose) sets them without writing the file."),
    HOSTS_ENV: ("unset", 'JSON list of the job\'s hosts, e.g. ["algo-1", "algo-2"], as the sagemaker-training '
                "toolkit passes it to user scripts; resourceconfig.json, which SageMaker itself writes, comes first."),
    CURRENT_HOST_ENV: ("algo-1", "This host's name, e.g. algo-1; resourceconfig.json comes first."),
}


# File names inside input/config, as SageMaker writes them.
HYPERPARAMETERS_FILE = "hyperparameters.json"
INPUT_DATA_CONFIG_FILE = "inputdataconfig.json"
RESOURCE_CONFIG_FILE = "resourceconfig.json"
CHECKPOINT_CONFIG_FILE = "checkpointconfig.json"
FAILURE_FILE = "failure"


def is_torchrun_worker(environ: Mapping[str, str] = os.environ) -> bool:
    """True in a process torchrun started (it sets RANK and WORLD_SIZE)."""
    return RANK_ENV in environ and WORLD_SIZE_ENV in environ


def _read_json(path: Path) -> dict[str, Any]:
    """Read a JSON object from `path`; a missing file is an empty dict.

    Raises:
        ValueError: the file exists but is not a JSON object.
    """
    if not path.is_file():
        return {}
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, not {type(value).__name__}")
    return value


def unwrap_hyperparameter(raw: Any) -> Any:
    """Undo SDK v2's JSON encoding of a value: `"\\"adam\\""` → `"adam"`, `"0.1"` → `"0.1"`."""
    if not isinstance(raw, str):
        return raw
    try:
        decoded = json.loads(raw)
    except (json.JSONDecodeError, ValueError):
        return raw
    return decoded if isinstance(decoded, str) else raw


def _json_list(name: str, text: str) -> list[str]:
    """`text` (a JSON list, as SageMaker writes `SM_HOSTS`) as a list of strings.

    Raises:
        ValueError: naming `name`, when `text` is not a JSON list.
    """
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if isinstance(value, str):  # SDK v2 JSON-encodes hyperparameter values once more
        return _json_list(name, value)
    if not isinstance(value, list):
        raise ValueError(f"{name} must be a JSON list such as [\"algo-1\", \"algo-2\"], not {text!r}")
    return [str(v) for v in value]



def execution_parameters(workers: int, threads: int, max_payload_bytes: int) -> dict[str, Any]:
    """What the model server answers on `GET /execution-parameters`, for Batch Transform.

    SageMaker asks a container this before a transform job that leaves the settings out
    ("Use your own inference code with batch transform"); `launch/batch_transform.py` puts the
    same figures in CreateTransformJob, so the job and the container cannot disagree.

    Args:
        workers, threads: gunicorn workers and request threads per worker.
        max_payload_bytes: the largest request body the server takes, in bytes.

    Returns:
        `{"MaxConcurrentTransforms": workers × threads (requests the server takes at once, so
        that they are batched), "BatchStrategy": "SINGLE_RECORD" (one image per request),
        "MaxPayloadInMB": the body limit in whole MB (10**6 bytes), at least 1}`.
    """
    return {"MaxConcurrentTransforms": workers * threads, "BatchStrategy": "SINGLE_RECORD",
            "MaxPayloadInMB": max(1, max_payload_bytes // 1_000_000)}


class ServerSettings(BaseModel):
    """The model server's settings: its environment variables, typed, checked and frozen.

    Built once per snapshot by `SageMakerEnv.server` (gunicorn_config and the app read them from
    there). Each field is read from the variable named by its alias; an unset or empty variable
    keeps the default. `docs/reference/environment.md` is generated from these fields
    (`python -m image_classifier.reference`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True, validate_by_name=True,
                              validate_by_alias=True)

    port: Whole = setting(
        8080, "Port the server listens on, on all interfaces. 8080 is the port of SageMaker's hosting "
        "contract; SageMaker sets the variable where a container must use another (inference pipelines).",
        unit="TCP port", ge=1, le=65535, validation_alias=BIND_TO_PORT_ENV)
    model_server_workers: Whole = setting(
        1, "gunicorn worker processes, each with a copy of the model. 1, not one per core as in AWS's BYOC "
        "sample: each worker's forward passes use every core and the workers take turns (serving/batcher.py), "
        "so more workers add resilience (one answers while another restarts), not speed. Measured here "
        "(resnet50, 2 cores, concurrency 8): 1 worker 21.2 images/s, 2 workers 17.4.",
        unit="processes", ge=1, validation_alias=MODEL_SERVER_WORKERS_ENV)
    model_server_timeout: Whole = setting(
        60, "Seconds a request may take: nginx in front answers 504 after this plus 30 s (its "
        "`proxy_read_timeout`). Also gunicorn's `timeout`, which for its gthread workers restarts a worker "
        "whose main loop stays silent that long (a hung worker), not one busy with a long request (gunicorn's "
        "settings). 60 as in AWS's BYOC sample's `serve`; 0 = no limit. The app waits half of it for the "
        "model to load.", unit="seconds", ge=0, validation_alias=MODEL_SERVER_TIMEOUT_ENV)
    max_payload_mb: Real = setting(
        6, "Largest request body accepted; a larger one is answered 413. 6 MB is SageMaker's limit for a "
        "real-time InvokeEndpoint request; Batch Transform sets the variable to the job's MaxPayloadInMB.",
        unit="MB (10^6 bytes)", gt=0, validation_alias=MAX_PAYLOAD_ENV)
    model_server_threads: Whole = setting(
        8, "Request threads per worker (gunicorn's gthread worker): requests a worker reads and decodes at "
        "once, which then share batched forward passes. nginx in front reads each request whole before "
        "gunicorn sees it, so a slow client holds none (serving/front.py).",
        unit="threads", ge=1, validation_alias=THREADS_ENV)
    max_batch: Whole = setting(
        16, "Most images one forward pass takes from the waiting requests; 1 = no batching.", unit="images",
        ge=1, validation_alias=MAX_BATCH_ENV)
    precision: Annotated[Precision, BeforeValidator(parse_word)] = setting(
        "fp32", "What the forward pass runs at, with OpenVINO: `fp32` (lossless: the eager model's logits to "
        "float rounding), `bf16` or `int8` (lossy, 2-3x and 4-6x faster on CPUs with AVX-512 BF16/VNNI or AMX; "
        "the training job's evaluation report measures each on the test channel). int8 needs the training job's "
        "`openvino/model-int8.xml` (hyperparameter export=openvino, the default).",
        validation_alias=PRECISION_ENV)
    max_image_pixels: Whole | None = setting(
        None, "Pillow's decompression-bomb limit per image: a larger image is refused. Unset keeps Pillow's "
        "own `Image.MAX_IMAGE_PIXELS` (89,478,485 pixels).", unit="pixels", ge=1,
        validation_alias=MAX_IMAGE_PIXELS_ENV)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> ServerSettings:
        """The settings from `environ`'s variables (others are ignored; empty ones keep the default).

        Raises:
            ValueError: a variable's value does not parse or is out of range; the message names the
                variable, its value and what it accepts.
        """
        names = {field.validation_alias for field in cls.model_fields.values()}
        for name in RETIRED_ENV.keys() & environ.keys():
            logger.warning("environment variable %s is no longer read: %s", name, RETIRED_ENV[name])
        given = {name: value for name, value in environ.items() if name in names and str(value).strip()}
        try:
            return cls.model_validate(given)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0])
            field = next(f for f in cls.model_fields.values() if f.validation_alias == name)
            fix = "correct or unset it" if field.default is None else \
                f"correct it, or unset it for the default ({show(field.default)})"
            raise ValueError(f"environment variable {name}={given[name]!r} is invalid: must be {accepts(field)}; "
                             f"{fix}") from None

    @property
    def max_payload_bytes(self) -> int:
        """Largest request body accepted, in bytes (MB = 10**6 bytes, SageMaker's unit)."""
        return int(self.max_payload_mb * 1_000_000)


def _default(name: str) -> Any:
    return ServerSettings.model_fields[name].default


# The defaults, as names (the schema above holds them).
DEFAULT_PORT = _default("port")
DEFAULT_WORKERS = _default("model_server_workers")
DEFAULT_TIMEOUT_SECONDS = _default("model_server_timeout")
DEFAULT_MAX_PAYLOAD_MB = _default("max_payload_mb")
DEFAULT_THREADS = _default("model_server_threads")
DEFAULT_MAX_BATCH = _default("max_batch")


@dataclass(frozen=True)
class SageMakerEnv:
    """A read-only snapshot of the container layout, built once from `os.environ`.

    Attributes:
        base_dir: the `/opt/ml` root (or `SAGEMAKER_BASE_DIR`).
        environ: the environment it was built from; `server` reads the model server's settings
            from it on first use, so a training job never fails on a server variable.
    """

    base_dir: Path
    environ: Mapping[str, str] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> SageMakerEnv:
        """Build the snapshot from `environ` (default: `os.environ`)."""
        environ = dict(os.environ if environ is None else environ)
        return cls(base_dir=Path(environ.get(BASE_DIR_ENV, DEFAULT_BASE_DIR)), environ=environ)

    # --- input -------------------------------------------------------------------------
    @property
    def input_dir(self) -> Path:
        return self.base_dir / "input"

    @property
    def config_dir(self) -> Path:
        return self.input_dir / "config"

    @property
    def data_dir(self) -> Path:
        return self.input_dir / "data"

    def channel_dir(self, channel: str) -> Path:
        """The local folder of an input channel: `input/data/<channel>`."""
        return self.data_dir / channel

    @property
    def hyperparameters_path(self) -> Path:
        return self.config_dir / HYPERPARAMETERS_FILE

    @property
    def input_data_config_path(self) -> Path:
        return self.config_dir / INPUT_DATA_CONFIG_FILE

    @property
    def resource_config_path(self) -> Path:
        return self.config_dir / RESOURCE_CONFIG_FILE

    @property
    def checkpoint_config_path(self) -> Path:
        return self.config_dir / CHECKPOINT_CONFIG_FILE

    def hyperparameters(self) -> dict[str, str]:
        """`hyperparameters.json` as SageMaker writes it (every value a string), updated by `SM_HPS`.

        Raises:
            ValueError: either is not a JSON object.
        """
        values = _read_json(self.hyperparameters_path)
        overrides = self.environ.get(HYPERPARAMETERS_ENV, "").strip()
        if overrides:
            try:
                extra = json.loads(overrides)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{HYPERPARAMETERS_ENV} is not valid JSON: {exc}") from exc
            if not isinstance(extra, dict):
                raise ValueError(f"{HYPERPARAMETERS_ENV} must hold a JSON object, not {type(extra).__name__}")
            values.update(extra)
        return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}

    def input_data_config(self) -> dict[str, Any]:
        """`inputdataconfig.json`: channel name → its TrainingInputMode, ContentType, ..."""
        return _read_json(self.input_data_config_path)

    def resource_config(self) -> dict[str, Any]:
        """`resourceconfig.json`: current_host, hosts, network_interface_name."""
        return _read_json(self.resource_config_path)

    def current_host(self) -> str:
        """This container's host name (`algo-1`, ...): resourceconfig.json, else `SM_CURRENT_HOST`."""
        return str(self.resource_config().get("current_host") or self.environ.get(CURRENT_HOST_ENV, "algo-1"))

    def distribution_hosts(self) -> list[str]:
        """The hosts that train together, sorted (SageMaker names them algo-1, algo-2, ...).

        As the sagemaker-training toolkit's `Environment.get_distribution_hosts`: with
        `instance_groups` in resourceconfig.json (heterogeneous clusters), the hosts of the groups
        named by the `sagemaker_distribution_instance_groups` hyperparameter (default: this
        host's group); else every host of resourceconfig.json, else `SM_HOSTS`, else this host.

        Raises:
            ValueError: `SM_HOSTS` or the groups hyperparameter is not a JSON list.
        """
        config = self.resource_config()
        groups = config.get("instance_groups") or []
        if groups:
            wanted = self.hyperparameters().get(DISTRIBUTION_GROUPS_HP)
            names = _json_list(DISTRIBUTION_GROUPS_HP, wanted) if wanted else [config.get("current_instance_group")]
            return sorted(h for g in groups if g.get("instance_group_name") in names for h in g.get("hosts", []))
        if config.get("hosts"):
            return sorted(config["hosts"])
        if self.environ.get(HOSTS_ENV):
            return sorted(_json_list(HOSTS_ENV, self.environ[HOSTS_ENV]))
        return [self.current_host()]

    def processes_per_host(self) -> int | None:
        """The `sagemaker_mpi_num_of_processes_per_host` hyperparameter; None when not set.

        Raises:
            ValueError: not a whole number >= 1.
        """
        raw = self.hyperparameters().get(PROCESSES_PER_HOST_HP)
        if raw is None:
            return None
        try:
            count = int(str(unwrap_hyperparameter(raw)).strip())
        except ValueError:
            count = 0
        if count < 1:
            raise ValueError(f"hyperparameter {PROCESSES_PER_HOST_HP}={raw!r} is invalid: must be a whole number >= 1")
        return count

    def channels(self) -> list[str]:
        """Channel names: those in `inputdataconfig.json`, else the folders under input/data."""
        names = list(self.input_data_config())
        if not names and self.data_dir.is_dir():
            names = sorted(p.name for p in self.data_dir.iterdir() if p.is_dir())
        return names

    # --- output ------------------------------------------------------------------------
    @property
    def model_dir(self) -> Path:
        """Model artifacts: SageMaker packs this folder into `model.tar.gz`."""
        return self.base_dir / "model"

    @property
    def output_dir(self) -> Path:
        return self.base_dir / "output"

    @property
    def output_data_dir(self) -> Path:
        """Other outputs (metrics, reports): SageMaker uploads them as `output.tar.gz`."""
        return self.output_dir / "data"

    @property
    def failure_path(self) -> Path:
        """Its text becomes the training job's FailureReason."""
        return self.output_dir / FAILURE_FILE

    @property
    def checkpoint_dir(self) -> Path:
        """`LocalPath` of `checkpointconfig.json`, else `<base>/checkpoints`.

        A `LocalPath` that is the default `/opt/ml/checkpoints` is mapped under the
        relocated base dir, so a layout copied into another folder stays self-contained.
        """
        local = _read_json(self.checkpoint_config_path).get("LocalPath")
        default = self.base_dir / "checkpoints"
        if not local or Path(local) == Path(DEFAULT_BASE_DIR) / "checkpoints":
            return default
        return Path(local)

    # --- serving ----------------------------------------------------------------------
    @functools.cached_property
    def server(self) -> ServerSettings:
        """The model server's settings, read from this snapshot's environment on first use.

        Raises:
            ValueError: a variable's value is invalid (the message names it and what it accepts).
        """
        return ServerSettings.from_environ(self.environ)
