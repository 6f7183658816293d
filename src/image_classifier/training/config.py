"""Training hyperparameters: one typed dataclass, parsed from SageMaker's `hyperparameters.json`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from image_classifier import models
from image_classifier.debugging.rule_names import RULE_NAMES
from image_classifier.sagemaker_env import FALSE_WORDS, TRUE_WORDS, unwrap_hyperparameter

OPTIMIZERS = ("adam", "adamw", "sgd")
FREEZE_MODES = ("backbone", "none")
LR_SCHEDULERS = ("cosine", "none")
FEATURE_CACHE_MODES = ("auto", "on", "off")
CLASS_WEIGHTINGS = ("none", "balanced")

@dataclass(frozen=True)
class TrainConfig:
    """Every hyperparameter of a training job, with its default.

    Keys are written with dashes in SageMaker (`batch-size`); underscores work too.
    """

    model: str = "resnet50"           # a name from image_classifier.models.MODEL_NAMES, or timm/<model>
    pretrained: bool = True           # start from the model's ImageNet weights
    freeze: str = "backbone"          # "backbone": train the new head only; "none": fine-tune all
    head_epochs: int = 0              # freeze=none: train the head alone for this many epochs first
                                      # (backbone frozen, BatchNorm statistics fixed), then everything
    backbone_lr_scale: float = 1.0    # freeze=none: the backbone's learning rate as a fraction of lr
                                      # (discriminative learning rates; 1 = one rate for all)
    dropout: float = 0.0              # dropout before each Linear layer of the new head, 0 = none
    head_hidden: str = ""             # comma-separated hidden layer sizes of the new head ("512,256");
                                      # "" = a single Linear layer
    head_activation: str = "relu"     # the hidden layers' activation: relu or gelu
    lr: float = 0.001                 # peak learning rate (of the head; see backbone-lr-scale)
    lr_scheduler: str = "cosine"      # cosine annealing per step over all epochs, or "none"
    warmup_epochs: int = 0            # linear warm-up from 0 over this many epochs (the backbone's:
                                      # from when it starts to train); 0 = none
    class_weighting: str = "none"     # "balanced": loss weight n / (classes x class count) per class
                                      # (scikit-learn's class_weight="balanced"), for imbalanced sets
    batch_size: int = 32
    epochs: int = 5
    optimizer: str = "adam"           # adam, adamw or sgd
    weight_decay: float = 0.0
    momentum: float = 0.9             # sgd only
    label_smoothing: float = 0.0      # CrossEntropyLoss(label_smoothing=...)
    image_size: int = 0               # side of the square network input, pixels; 0 = the size the
                                      # model's weights were trained at (224 for torchvision's)
    crop_scale_min: float = 0.08      # RandomResizedCrop's smallest area fraction (torchvision default)
    hflip_prob: float = 0.5           # RandomHorizontalFlip probability, 0 = off
    augment: bool = True              # false: train on the eval transforms (no random crop or flip)
    feature_cache: str = "auto"       # backbone features computed once: auto (freeze=backbone and
                                      # augment=false), on (needs freeze=backbone) or off
    channels_last: bool = True        # NHWC memory format on a GPU (faster convolutions; ignored on the CPU)
    compile: bool = False             # torch.compile the model (needs a C compiler in the image)
    num_workers: int = -1             # DataLoader worker processes; -1 = min(4, CPU cores)
    seed: int = 42
    early_stopping_patience: int = 0  # stop after this many epochs without a better valid_accuracy; 0 = off
    amp: bool = True                  # mixed precision on a GPU (ignored on the CPU)
    debug: bool = False               # smdebug hook with the common configuration, rules, debugger report
    debug_stop_on: str = ""           # comma-separated rules that stop training when they fire; implies debug
    profile: bool = False             # system monitor, step timing, torch.profiler, profiler rules and report

    def __post_init__(self) -> None:
        # image-size 0 resolves to the model's pretrained input size (timm: its pretrained config);
        # an unknown model is left for validate() to name
        if self.image_size == 0 and _known(self.model):
            object.__setattr__(self, "image_size", models.data_config(self.model).image_size)

    @classmethod
    def field_names(cls) -> list[str]:
        """The hyperparameter names as SageMaker users write them (dashes)."""
        return [f.name.replace("_", "-") for f in dataclasses.fields(cls)]

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any]) -> "TrainConfig":
        """Parse hyperparameters as SageMaker passes them: string values, possibly JSON-encoded.

        The SageMaker Python SDK v2 JSON-encodes each value (`"\\"resnet50\\""`); SDK v3, the
        console and the API pass them plain (`"resnet50"`). Both are accepted. SageMaker's own
        keys (`_tuning_objective_metric`, `sagemaker_*`) are ignored.

        Raises:
            ValueError: an unknown key (the message lists the valid ones) or a value that does
                not parse or is out of range.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        unknown = []
        for key, raw in hyperparameters.items():
            if key.startswith(("sagemaker_", "_tuning_objective_metric")):
                continue
            name = key.replace("-", "_")
            if name not in fields:
                unknown.append(key)
                continue
            values[name] = _convert(key, unwrap_hyperparameter(raw), fields[name].type)
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; "
                f"valid ones: {', '.join(cls.field_names())}")
        config = cls(**values)
        config.validate()
        return config

    def validate(self) -> None:
        """Check ranges and choices.

        Raises:
            ValueError: naming the hyperparameter, its value and what is allowed.
        """
        def check(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                value = getattr(self, name.replace("-", "_"))
                raise ValueError(f"hyperparameter {name}={value!r} is invalid: must be {allowed}")

        check(_known(self.model), "model", f"one of {', '.join(models.MODEL_NAMES)}, or {models.TIMM_PREFIX}<a timm "
              f"model name> such as {models.TIMM_PREFIX}convnext_tiny.fb_in22k_ft_in1k")
        check(self.head_epochs >= 0 and (self.freeze != "none" or self.head_epochs < self.epochs), "head-epochs",
              ">= 0, and with freeze=none fewer than epochs (else the backbone never trains)")
        check(0 < self.backbone_lr_scale <= 1, "backbone-lr-scale", "in (0, 1]")
        check(self.warmup_epochs >= 0, "warmup-epochs", ">= 0")
        check(self.class_weighting in CLASS_WEIGHTINGS, "class-weighting", f"one of {', '.join(CLASS_WEIGHTINGS)}")
        check(self.head_activation in models.HEAD_ACTIVATIONS, "head-activation",
              f"one of {', '.join(models.HEAD_ACTIVATIONS)}")
        check(_sizes(self.head_hidden) is not None, "head-hidden",
              "comma-separated whole numbers >= 1 (hidden layer sizes), or empty")
        check(self.freeze in FREEZE_MODES, "freeze", f"one of {', '.join(FREEZE_MODES)}")
        check(self.optimizer in OPTIMIZERS, "optimizer", f"one of {', '.join(OPTIMIZERS)}")
        check(self.feature_cache in FEATURE_CACHE_MODES, "feature-cache", f"one of {', '.join(FEATURE_CACHE_MODES)}")
        check(self.feature_cache != "on" or self.freeze == "backbone", "feature-cache",
              "auto or off with freeze=none (a backbone that trains changes its features every step)")
        check(self.lr_scheduler in LR_SCHEDULERS, "lr-scheduler", f"one of {', '.join(LR_SCHEDULERS)}")
        check(self.lr > 0, "lr", "> 0")
        check(self.batch_size >= 1, "batch-size", ">= 1")
        check(self.epochs >= 1, "epochs", ">= 1")
        check(self.weight_decay >= 0, "weight-decay", ">= 0")
        check(0 <= self.momentum < 1, "momentum", "in [0, 1)")
        check(0 <= self.label_smoothing < 1, "label-smoothing", "in [0, 1)")
        check(0 <= self.dropout < 1, "dropout", "in [0, 1)")
        check(32 <= self.image_size <= 1024, "image-size", "between 32 and 1024 pixels")
        check(0 < self.crop_scale_min <= 1, "crop-scale-min", "in (0, 1]")
        check(0 <= self.hflip_prob <= 1, "hflip-prob", "in [0, 1]")
        check(self.num_workers >= -1, "num-workers", ">= 0, or -1 for automatic")
        check(self.early_stopping_patience >= 0, "early-stopping-patience", ">= 0")
        known = {n.lower() for n in RULE_NAMES}
        check(all(n.strip().lower() in known for n in self.debug_stop_on.split(",") if n.strip()),
              "debug-stop-on", f"a comma-separated list of {', '.join(RULE_NAMES)}")

    @property
    def uses_feature_cache(self) -> bool:
        """Whether the job trains the head on cached backbone features (see training.features)."""
        if self.feature_cache == "auto":
            return self.freeze == "backbone" and not self.augment
        return self.feature_cache == "on"

    @property
    def hidden_sizes(self) -> tuple[int, ...]:
        """`head-hidden` as layer sizes: () for a single Linear head."""
        return _sizes(self.head_hidden) or ()

    def backbone_frozen(self, epoch: int) -> bool:
        """Whether the backbone stays fixed in `epoch` (1-based): freeze=backbone, or a head epoch."""
        return self.freeze == "backbone" or epoch <= self.head_epochs

    @property
    def stop_on_rules(self) -> tuple[str, ...]:
        """`debug-stop-on` as rule names (case as AWS writes them)."""
        wanted = {n.strip().lower() for n in self.debug_stop_on.split(",") if n.strip()}
        return tuple(n for n in RULE_NAMES if n.lower() in wanted)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain JSON-serialisable values, keyed like hyperparameters.json."""
        return {k.replace("_", "-"): v for k, v in dataclasses.asdict(self).items()}


def _known(name: str) -> bool:
    try:
        models.check_name(name)
        return True
    except ValueError:
        return False


def _sizes(text: str) -> tuple[int, ...] | None:
    """`"512, 256"` → (512, 256); "" → (); None when a part is not a whole number >= 1."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _convert(key: str, value: Any, type_name: Any) -> Any:
    """Convert one hyperparameter value to its field's type (given as an annotation string)."""
    type_name = getattr(type_name, "__name__", type_name)
    text = str(value).strip()
    try:
        if type_name == "bool":
            if isinstance(value, bool):
                return value
            if text.lower() in TRUE_WORDS:
                return True
            if text.lower() in FALSE_WORDS:
                return False
            raise ValueError
        if type_name == "int":
            as_float = float(text)
            if not as_float.is_integer():
                raise ValueError
            return int(as_float)
        if type_name == "float":
            number = float(text)
            if not math.isfinite(number):  # "inf" and "nan" parse, but no range check can reject inf
                raise ValueError
            return number
        return text.lower()
    except ValueError:
        raise ValueError(f"hyperparameter {key}={value!r} is not a valid {type_name}") from None
