"""The hyperparameter search space, defined once for the cloud tuner (and local tuning).

Default ranges: `lr` continuous 0.001–0.1 on a log scale, `batch-size` categorical
{32, 64, 128}, `epochs` integer 2–5; `model` categorical over the registry is opt-in. A JSON
file overrides or adds ranges:

    {"lr": {"type": "continuous", "min": 0.0001, "max": 0.01, "scaling": "Logarithmic"},
     "epochs": {"type": "integer", "min": 3, "max": 8},
     "optimizer": {"type": "categorical", "values": ["adam", "sgd"]}}

`to_sagemaker` gives the `ParameterRanges` of CreateHyperParameterTuningJob; `to_optuna` the
same ranges as Optuna distributions, for `image-classifier tune` on your own machine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from image_classifier.models import MODEL_NAMES
from image_classifier.training.config import TrainConfig

# SageMaker's ScalingType values (API reference: ContinuousParameterRange, IntegerParameterRange)
SCALINGS = ("Auto", "Linear", "Logarithmic", "ReverseLogarithmic")
# scaling → Optuna's log flag; ReverseLogarithmic has no Optuna counterpart
_OPTUNA_LOG = {"Auto": False, "Linear": False, "Logarithmic": True}


@dataclass(frozen=True)
class ContinuousRange:
    name: str
    min: float
    max: float
    scaling: str = "Auto"


@dataclass(frozen=True)
class IntegerRange:
    name: str
    min: int
    max: int
    scaling: str = "Auto"


@dataclass(frozen=True)
class CategoricalRange:
    name: str
    values: tuple[str, ...]


Range = ContinuousRange | IntegerRange | CategoricalRange

DEFAULT_RANGES: tuple[Range, ...] = (
    ContinuousRange("lr", 0.001, 0.1, "Logarithmic"),
    CategoricalRange("batch-size", ("32", "64", "128")),
    IntegerRange("epochs", 2, 5, "Linear"),
)
MODEL_RANGE = CategoricalRange("model", MODEL_NAMES)


def _validate(r: Range) -> Range:
    """Raises: ValueError: an unknown hyperparameter, an empty range, or values the job refuses."""
    if r.name.replace("_", "-") not in TrainConfig.field_names():
        raise ValueError(f"unknown hyperparameter {r.name!r} in the search space; "
                         f"valid ones: {', '.join(TrainConfig.field_names())}")
    if isinstance(r, CategoricalRange):
        if not r.values:
            raise ValueError(f"categorical range {r.name} has no values")
        candidates = list(r.values)
    else:
        if not r.min < r.max:
            raise ValueError(f"range {r.name}: min {r.min} must be below max {r.max}")
        if r.scaling not in SCALINGS:
            raise ValueError(f"range {r.name}: scaling {r.scaling!r} is not one of {', '.join(SCALINGS)}")
        if r.scaling == "Logarithmic" and r.min <= 0:
            raise ValueError(f"range {r.name}: a logarithmic range needs min > 0")
        candidates = [r.min, r.max]
    for value in candidates:  # the job must accept every end of the range
        TrainConfig.from_hyperparameters({r.name: str(value)})
    return r


def _from_json(name: str, spec: dict[str, Any]) -> Range:
    kind = spec.get("type")
    try:
        if kind == "continuous":
            return ContinuousRange(name, float(spec["min"]), float(spec["max"]), spec.get("scaling", "Auto"))
        if kind == "integer":
            return IntegerRange(name, int(spec["min"]), int(spec["max"]), spec.get("scaling", "Auto"))
        if kind == "categorical":
            return CategoricalRange(name, tuple(str(v) for v in spec["values"]))
    except KeyError as exc:
        raise ValueError(f"range {name}: missing {exc.args[0]!r}") from None
    raise ValueError(f"range {name}: type must be continuous, integer or categorical, not {kind!r}")


def search_space(include_model: bool = False, overrides: str | None = None) -> list[Range]:
    """The default ranges (plus `model` if asked), with the ranges of the JSON text `overrides`.

    Raises:
        ValueError: bad JSON, or a range that is unknown, empty or refused by the job's config.
    """
    ranges = {r.name: r for r in DEFAULT_RANGES + ((MODEL_RANGE,) if include_model else ())}
    if overrides is not None:
        try:
            document = json.loads(overrides)
        except json.JSONDecodeError as exc:
            raise ValueError(f"search space overrides are not JSON: {exc}") from None
        if not isinstance(document, dict):
            raise ValueError("search space overrides must be a JSON object of ranges")
        ranges.update({name: _from_json(name, spec) for name, spec in document.items()})
    return [_validate(r) for r in ranges.values()]


def to_sagemaker(ranges: list[Range]) -> dict[str, list[dict[str, Any]]]:
    """The `ParameterRanges` of CreateHyperParameterTuningJob (values as strings, as the API wants)."""
    result: dict[str, list[dict[str, Any]]] = {
        "ContinuousParameterRanges": [], "IntegerParameterRanges": [], "CategoricalParameterRanges": []}
    for r in ranges:
        if isinstance(r, CategoricalRange):
            result["CategoricalParameterRanges"].append({"Name": r.name, "Values": list(r.values)})
        else:
            key = "ContinuousParameterRanges" if isinstance(r, ContinuousRange) else "IntegerParameterRanges"
            result[key].append({"Name": r.name, "MinValue": str(r.min), "MaxValue": str(r.max),
                                "ScalingType": r.scaling})
    return result


def to_optuna(ranges: list[Range]) -> dict[str, Any]:
    """The ranges as Optuna distributions, which `suggest` samples with `trial.suggest_*`.

    Continuous ranges become `FloatDistribution`, integer ranges `IntDistribution`, both with
    `log=True` for SageMaker's `Logarithmic` scaling; `Linear` and `Auto` sample linearly (Auto
    lets SageMaker pick, Optuna has no such choice). Categorical values stay strings.

    Raises:
        ValueError: a range Optuna cannot sample: `ReverseLogarithmic` scaling (Optuna has no
            such distribution), or a `Logarithmic` integer range below 1.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    distributions: dict[str, Any] = {}
    for r in ranges:
        if isinstance(r, CategoricalRange):
            distributions[r.name] = CategoricalDistribution(list(r.values))
            continue
        if r.scaling not in _OPTUNA_LOG:
            raise ValueError(f"range {r.name}: scaling {r.scaling!r} has no Optuna distribution; "
                             f"use one of {', '.join(_OPTUNA_LOG)}")
        log = _OPTUNA_LOG[r.scaling]
        if isinstance(r, IntegerRange):
            if log and r.min < 1:
                raise ValueError(f"range {r.name}: a logarithmic integer range needs min >= 1 for Optuna")
            distributions[r.name] = IntDistribution(r.min, r.max, log=log)
        else:
            distributions[r.name] = FloatDistribution(r.min, r.max, log=log)
    return distributions


def suggest(trial: Any, distributions: dict[str, Any]) -> dict[str, str]:
    """Sample one value of each distribution of `to_optuna` in an Optuna trial.

    Args:
        trial: an `optuna.Trial`.
        distributions: `to_optuna`'s answer.

    Returns:
        hyperparameter name → value as a string, as the training job reads it.
    """
    from optuna.distributions import CategoricalDistribution, IntDistribution

    values: dict[str, str] = {}
    for name, d in distributions.items():
        if isinstance(d, CategoricalDistribution):
            value = trial.suggest_categorical(name, d.choices)
        elif isinstance(d, IntDistribution):
            value = trial.suggest_int(name, d.low, d.high, log=d.log)
        else:
            value = trial.suggest_float(name, d.low, d.high, log=d.log)
        values[name] = str(value)
    return values
