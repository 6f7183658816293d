"""Model artifacts: the weights and the one JSON config that serving needs, written atomically.

torch and the model registry are imported by the functions that need them: the server reads
`model_config.json` (`load_spec`) and predicts without torch.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import uuid
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

WEIGHTS_FILE = "model.pth"          # the state_dict of ModelSpec.create_model()
CONFIG_FILE = "model_config.json"   # a ModelSpec


_CLASS_PREFIX = re.compile(r"^\d+[._-]")


def label_of(class_name: str) -> str:
    """A class folder's label (the `labels` of model_config.json): its name without the `NNN.`
    prefix (`001.Affenpinscher` → `Affenpinscher`)."""
    return _CLASS_PREFIX.sub("", class_name, count=1) or class_name


@dataclass(frozen=True)
class ModelSpec:
    """All serving needs to rebuild and feed the model, without the training config."""

    arch: str                  # a name from image_classifier.models.MODEL_NAMES, or timm/<model>
    num_classes: int
    class_names: list[str]     # class folder names; class_id = index (sorted, as ImageFolder)
    labels: list[str]          # class names without their `NNN.` prefix
    image_size: int            # network input side, pixels
    resize_size: int           # shorter-side resize before the center crop, pixels
    mean: list[float]          # per-channel normalisation (RGB): the pretrained weights' own
    std: list[float]
    dropout: float = 0.0
    head_hidden: list[int] = field(default_factory=list)  # the head's hidden layer sizes; [] = one Linear
    head_activation: str = "relu"                          # their activation

    def create_model(self) -> nn.Module:
        """The network these artifacts hold, with random weights (load `model.pth` into it).

        Raises:
            ValueError: the spec names no registry model or head.
        """
        from image_classifier import models

        return models.create_model(self.arch, self.num_classes, self.dropout, head_hidden=self.head_hidden,
                                   head_activation=self.head_activation)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        """Raises: ValueError: not a model config (names the missing keys)."""
        data: dict[str, Any] = json.loads(text)
        names = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
        missing = sorted(n for n in required if n not in data)
        if missing:
            raise ValueError(f"{CONFIG_FILE} lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in data.items() if k in names})


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder and a rename.

    The file gets the usual permissions (0666 less the umask), not mkstemp's 0600: a model
    server running as another user (the serving image's `model-server`) must read it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_torch_save(obj: Any, path: Path) -> None:
    """`torch.save` through `atomic_write_bytes`: never a half-written file."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def state_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) of a state_dict's names, dtypes, shapes and bytes, in key order."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}:".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_model(model_dir: Path, state_dict: dict[str, torch.Tensor], spec: ModelSpec) -> None:
    """Write `model.pth` then `model_config.json` into `model_dir` (SageMaker's model artifacts)."""
    atomic_torch_save({k: v.detach().cpu() for k, v in state_dict.items()}, model_dir / WEIGHTS_FILE)
    atomic_write_bytes(model_dir / CONFIG_FILE, spec.to_json().encode())


def load_spec(model_dir: Path) -> ModelSpec:
    """The `model_config.json` `save_model` wrote.

    Raises:
        FileNotFoundError: it is missing.
        ValueError: it is not a ModelSpec.
    """
    return ModelSpec.from_json((model_dir / CONFIG_FILE).read_text(encoding="utf-8"))


def load_model(model_dir: Path) -> tuple[dict[str, torch.Tensor], ModelSpec]:
    """Read the artifacts `save_model` wrote (`torch.load(weights_only=True)`).

    Raises:
        FileNotFoundError: either file is missing.
        ValueError: the config is not a ModelSpec.
    """
    spec = load_spec(model_dir)
    import torch

    state_dict = torch.load(model_dir / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    return state_dict, spec
