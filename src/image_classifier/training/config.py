"""Training hyperparameters: one typed, frozen pydantic model, parsed from SageMaker's `hyperparameters.json`."""

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from image_classifier import models
from image_classifier.debugging.rule_names import RULE_NAMES
from image_classifier.sagemaker_env import unwrap_hyperparameter
from image_classifier.schema import NOT_A, Flag, Real, Whole, Word, accepts, parse_word, setting

SAGEMAKER_KEYS = ("sagemaker_", "_tuning_objective_metric")  # SageMaker's own hyperparameters: ignored
CROSS_FIELD = "cross_field"  # the pydantic error type of a check between two hyperparameters

Freeze = Annotated[Literal["backbone", "none"], BeforeValidator(parse_word)]
Activation = Annotated[Literal[tuple(models.HEAD_ACTIVATIONS)], BeforeValidator(parse_word)]
Scheduler = Annotated[Literal["cosine", "none"], BeforeValidator(parse_word)]
Weighting = Annotated[Literal["none", "balanced"], BeforeValidator(parse_word)]
Optimizer = Annotated[Literal["adam", "adamw", "sgd"], BeforeValidator(parse_word)]
FeatureCache = Annotated[Literal["auto", "on", "off"], BeforeValidator(parse_word)]
Export = Annotated[Literal["openvino", "none"], BeforeValidator(parse_word)]

MODEL_ACCEPTS = (f"one of {', '.join(models.MODEL_NAMES)}, or {models.TIMM_PREFIX}<a timm model name> such as "
                 f"{models.TIMM_PREFIX}convnext_tiny.fb_in22k_ft_in1k")
IMAGE_SIZES = (32, 1024)  # the smallest and largest image-size, pixels


class TrainConfig(BaseModel):
    """Every hyperparameter of a training job, with its type, range, unit and default.

    Keys are written with dashes in SageMaker (`batch-size`); underscores work too. Frozen: a
    changed copy is `config.model_copy(update={...})`. `TrainConfig(**fields)` validates too and
    raises pydantic's `ValidationError` (a ValueError); `from_hyperparameters` words the error for
    the job's failure file. `docs/reference/hyperparameters.md` is generated from these fields
    (`python -m image_classifier.reference`).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    model: Word = setting("resnet50", "The network: a registry architecture (`image_classifier.models`) or any "
                          "timm model.", accepts=MODEL_ACCEPTS)
    pretrained: Flag = setting(True, "Start from the model's ImageNet weights.")
    freeze: Freeze = setting("backbone", "`backbone`: train the new head only; `none`: fine-tune the whole network.")
    head_epochs: Whole = setting(
        0, "With freeze=none: train the head alone for this many epochs first (backbone frozen, BatchNorm "
        "statistics fixed), then everything.", unit="epochs", ge=0,
        accepts=">= 0, and with freeze=none fewer than epochs (else the backbone never trains)")
    backbone_lr_scale: Real = setting(1.0, "With freeze=none: the backbone's learning rate as a fraction of lr "
                                      "(discriminative learning rates; 1 = one rate for all).", unit="fraction of lr",
                                      gt=0, le=1)
    dropout: Real = setting(0.0, "Dropout before each Linear layer of the new head; 0 = none.",
                            unit="probability", ge=0, lt=1)
    head_hidden: Word = setting("", "Hidden layer sizes of the new head, such as `512,256`; empty = a single "
                                "Linear layer.", unit="features",
                                accepts="comma-separated whole numbers >= 1 (hidden layer sizes), or empty")
    head_activation: Activation = setting("relu", "The activation of the head's hidden layers.")
    lr: Real = setting(0.001, "Peak learning rate (of the head; see backbone-lr-scale). The default is "
                       "`torch.optim.Adam`'s.", gt=0)
    lr_scheduler: Scheduler = setting("cosine", "`cosine`: cosine annealing per step over all epochs; "
                                      "`none`: a constant rate.")
    warmup_epochs: Whole = setting(0, "Linear warm-up from 0 over this many epochs (the backbone's: from when it "
                                   "starts to train); 0 = none.", unit="epochs", ge=0)
    class_weighting: Weighting = setting(
        "none", "`balanced`: loss weight n / (classes x class count) per class (scikit-learn's "
        "`class_weight=\"balanced\"`), for imbalanced sets.")
    batch_size: Whole = setting(32, "Images per training step (per process in a distributed job).",
                                unit="images", ge=1)
    epochs: Whole = setting(5, "Passes over the training set.", unit="epochs", ge=1)
    optimizer: Optimizer = setting("adam", "The optimizer (torch.optim).")
    weight_decay: Real = setting(0.0, "L2 penalty (the optimizer's weight_decay); 0 = none.", ge=0)
    momentum: Real = setting(0.9, "SGD momentum (optimizer=sgd only); 0.9 as in PyTorch's ImageNet example.",
                             ge=0, lt=1)
    label_smoothing: Real = setting(0.0, "`CrossEntropyLoss(label_smoothing=...)`; 0 = none.", ge=0, lt=1)
    image_size: Whole = setting(
        0, "Side of the square network input; 0 = the size the model's weights were trained at (224 for "
        "torchvision's, a timm model's pretrained config).", unit="pixels",
        accepts=f"0 (the model's size), or between {IMAGE_SIZES[0]} and {IMAGE_SIZES[1]} pixels")
    crop_scale_min: Real = setting(0.08, "RandomResizedCrop's smallest area fraction; 0.08 is torchvision's "
                                   "default.", unit="fraction of the image", gt=0, le=1)
    hflip_prob: Real = setting(0.5, "RandomHorizontalFlip's probability (0.5 is torchvision's default); 0 = off.",
                               unit="probability", ge=0, le=1)
    augment: Flag = setting(True, "false: train on the evaluation transforms (no random crop or flip).")
    feature_cache: FeatureCache = setting(
        "auto", "Backbone features computed once: `auto` (when freeze=backbone and augment=false), `on` (needs "
        "freeze=backbone) or `off`.")
    export: Export = setting(
        "openvino", "`openvino`: beside model.pth, the model in OpenVINO's format at fp32 and int8 (calibrated "
        "on 300 train-channel images) under model/openvino/, for the server's precisions; `none`: not.")
    channels_last: Flag = setting(True, "NHWC memory format on a GPU (faster convolutions; ignored on the CPU).")
    compile: Flag = setting(False, "`torch.compile` the model (needs a C compiler in the image).")
    num_workers: Whole = setting(-1, "DataLoader worker processes; -1 = min(4, CPU cores).", unit="processes",
                                 ge=-1, accepts=">= 0, or -1 for automatic")
    seed: Whole = setting(42, "Random seed of the weights' initialisation, the data order and augmentation.")
    early_stopping_patience: Whole = setting(0, "Stop after this many epochs without a better valid_accuracy; "
                                             "0 = off.", unit="epochs", ge=0)
    amp: Flag = setting(True, "Mixed precision on a GPU (ignored on the CPU).")
    debug: Flag = setting(False, "smdebug hook with the common configuration, rules and the debugger report.")
    debug_stop_on: Word = setting("", "Comma-separated rules that stop training when they fire; implies debug.",
                                  accepts=f"a comma-separated list of {', '.join(RULE_NAMES)}")
    profile: Flag = setting(False, "System monitor, step timing, torch.profiler, profiler rules and report.")

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        models.check_name(name)  # ValueError: reworded by _hyperparameter_error
        return name

    @field_validator("head_hidden")
    @classmethod
    def _layer_sizes(cls, text: str) -> str:
        if _sizes(text) is None:
            raise ValueError("not layer sizes")
        return text

    @field_validator("debug_stop_on")
    @classmethod
    def _rule_names(cls, text: str) -> str:
        known = {n.lower() for n in RULE_NAMES}
        if not all(n.strip() in known for n in text.split(",") if n.strip()):
            raise ValueError("unknown rule")
        return text

    @field_validator("image_size")
    @classmethod
    def _resolve_image_size(cls, size: int, info: ValidationInfo) -> int:
        """0 becomes the model's pretrained input size (timm: its pretrained config)."""
        if size == 0 and "model" in info.data:
            size = models.data_config(info.data["model"]).image_size
        if not IMAGE_SIZES[0] <= size <= IMAGE_SIZES[1]:
            raise ValueError("out of range")
        return size

    @model_validator(mode="after")
    def _consistent(self) -> "TrainConfig":
        """Checks between hyperparameters."""
        if self.freeze == "none" and self.head_epochs >= self.epochs:
            _refuse("head-epochs", self.head_epochs, accepts(TrainConfig.model_fields["head_epochs"]))
        if self.feature_cache == "on" and self.freeze != "backbone":
            _refuse("feature-cache", self.feature_cache,
                    "auto or off with freeze=none (a backbone that trains changes its features every step)")
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        """The hyperparameter names as SageMaker users write them (dashes)."""
        return [name.replace("_", "-") for name in cls.model_fields]

    @classmethod
    def from_hyperparameters(cls, hyperparameters: Mapping[str, Any]) -> "TrainConfig":
        """Parse hyperparameters as SageMaker passes them: string values, possibly JSON-encoded.

        The SageMaker Python SDK v2 JSON-encodes each value (`"\\"resnet50\\""`); SDK v3, the
        console and the API pass them plain (`"resnet50"`). Both are accepted, and native JSON
        values too. SageMaker's own keys (`_tuning_objective_metric`, `sagemaker_*`) are ignored.

        Raises:
            ValueError: an unknown key (the message lists the valid ones), or a value that does
                not parse or is out of range (the message names the hyperparameter, its value and
                what it accepts).
        """
        values: dict[str, Any] = {}
        written: dict[str, str] = {}  # field name -> the key as the user wrote it
        unknown = []
        for key, raw in hyperparameters.items():
            if key.startswith(SAGEMAKER_KEYS):
                continue
            name = key.replace("-", "_")
            if name not in cls.model_fields:
                unknown.append(key)
                continue
            values[name], written[name] = unwrap_hyperparameter(raw), key
        if unknown:
            raise ValueError(
                f"unknown hyperparameter(s) {', '.join(sorted(unknown))}; "
                f"valid ones: {', '.join(cls.field_names())}")
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise _hyperparameter_error(exc, written) from None

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
        return {k.replace("_", "-"): v for k, v in self.model_dump().items()}


def _sizes(text: str) -> tuple[int, ...] | None:
    """`"512, 256"` → (512, 256); "" → (); None when a part is not a whole number >= 1."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _invalid(name: str, value: Any, allowed: str) -> str:
    return f"hyperparameter {name}={value!r} is invalid: must be {allowed}"


def _refuse(name: str, value: Any, allowed: str) -> None:
    """Raises: PydanticCustomError: a check between hyperparameters failed; its message is final."""
    raise PydanticCustomError(CROSS_FIELD, "{message}", {"message": _invalid(name, value, allowed)})


def _hyperparameter_error(exc: ValidationError, written: Mapping[str, str]) -> ValueError:
    """The first of pydantic's errors as one sentence that names the hyperparameter and what it accepts.

    A value that is not text of its type names the key as the user wrote it (`batch_size`); a value
    out of range or not among the choices, the hyperparameter's dashed name.
    """
    errors = exc.errors()
    error = next((e for e in errors if e["type"] == NOT_A), errors[0])
    if error["type"] == CROSS_FIELD or not error["loc"]:
        return ValueError(error["msg"])
    name = str(error["loc"][0])
    dashed, allowed = name.replace("_", "-"), accepts(TrainConfig.model_fields[name])
    if error["type"] == NOT_A:
        return ValueError(f"hyperparameter {written.get(name, dashed)}={error['input']!r} is {error['msg']}: "
                          f"{dashed} must be {allowed}")
    return ValueError(_invalid(dashed, error["input"], allowed))
