"""The job's evaluation passes with figures beyond loss and accuracy, and the end-of-job report with Grad-CAM."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from image_classifier import artifacts, runtime
from image_classifier.evaluation import REPORT_DIR, baseline, plots
from image_classifier.evaluation import report as evaluation_report
from image_classifier.evaluation.metrics import format_table, macro_f1, precision_row
from image_classifier.images import open_image
from image_classifier.profiling.steps import NO_TIMER, NoTimer
from image_classifier.sagemaker_env import DEFAULT_MAX_BATCH, SageMakerEnv
from image_classifier.training import data, distributed, export
from image_classifier.training.loop import Outputs, evaluate
from image_classifier.transforms import eval_transform, eval_view

if TYPE_CHECKING:  # smdebug is imported only when debugging is asked for
    from image_classifier.debugging.hook import DebugHook

logger = logging.getLogger(__name__)

# The backbones downsample by 32: below 64 px their last feature map is 1x1, and a Grad-CAM
# heat-map of it is flat, with nothing to say about where (see explain.target_layer).
GRADCAM_MIN_IMAGE_SIZE = 64

Predictions = tuple[np.ndarray, np.ndarray, np.ndarray]  # (probabilities (N, classes) float32, targets, indices)


def validate(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device,
             amp_dtype: torch.dtype | None, hook: DebugHook | None = None,
             timer: NoTimer = NO_TIMER) -> dict[str, float]:
    """The validation pass of an epoch: `loss`, `accuracy` (0-1) and `f1` (macro) of `model` over `loader`.

    ddp: the whole channel's figures on every rank (`model` unwrapped; a collective).
    """
    outputs = Outputs()
    valid = evaluate(model, loader, criterion, device, amp_dtype, hook, timer=timer,
                     reduce=distributed.all_reduce_meter, outputs=outputs)
    probabilities, targets, _ = gathered(loader, outputs)
    valid["f1"] = macro_f1(probabilities.argmax(axis=1), targets)
    return valid


def final_pass(model: nn.Module, loaders: dict[str, DataLoader], criterion: nn.Module, device: torch.device,
               amp_dtype: torch.dtype | None,
               hook: DebugHook | None = None) -> tuple[str, Predictions, dict[str, float] | None]:
    """The end-of-job pass of `model` (the best weights) over the report's channel: test, else valid again.

    The debugger (`hook`) watches the test channel only, in smdebug's predict mode. ddp: a collective.

    Returns:
        the channel's name, its predictions (`gathered`), and on the test channel its
        `test_loss`, `test_accuracy` and `test_f1` (else None).
    """
    channel, outputs = data.TEST if data.TEST in loaders else data.VALID, Outputs()
    metrics = evaluate(model, loaders[channel], criterion, device, amp_dtype,
                       hook if channel == data.TEST else None, hook_mode="predict",
                       reduce=distributed.all_reduce_meter, outputs=outputs)
    predictions = gathered(loaders[channel], outputs)  # ddp: every rank
    if channel != data.TEST:
        return channel, predictions, None
    return channel, predictions, {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"],
                                  "test_f1": macro_f1(predictions[0].argmax(axis=1), predictions[1])}


def gathered(loader: DataLoader, outputs: Outputs) -> Predictions:
    """The whole channel's (probabilities, targets, dataset indices) of an evaluation pass, in dataset order.

    ddp: every rank's shard, gathered (a collective: every rank calls it).
    """
    probabilities, targets = outputs.arrays()
    indices = np.array([index for _, index in loader.sampler], dtype=np.int64)  # the pass's order
    probabilities, targets, indices = distributed.gather_arrays(probabilities, targets, indices)
    order = np.argsort(indices, kind="stable")
    return probabilities[order], targets[order], indices[order]


def sample_paths(env: SageMakerEnv, channel: str, loader: DataLoader, class_names: list[str]) -> list[str]:
    """The image file of each item of `loader`'s dataset; cached features are matched to a new scan.

    Raises:
        ValueError: the channel's files changed since its features were cached.
    """
    samples = getattr(loader.dataset, "samples", None)
    if samples is None:  # feature-cache: the cache was computed over this scan's order
        samples = data.scan_channel(data.resolve_channels(env.channel_dir)[channel], class_names).samples
        if [c for _, c in samples] != loader.dataset.targets.tolist():
            raise ValueError(f"the {channel} channel's images differ from its cached features'")
    return [path for path, _ in samples]


def gradcam_overlays(spec: artifacts.ModelSpec, state_dict: dict, probabilities: np.ndarray,
                     device: torch.device) -> plots.Overlays | None:
    """The predictions grid's Grad-CAM: each image with the heat-map of its predicted class.

    Computed by a fresh model built from `spec` (as serving builds it) holding `state_dict` (the
    saved weights), in eval mode on `device`: no debugger hooks, no DDP wrapper. None below
    `GRADCAM_MIN_IMAGE_SIZE`. `probabilities`: (N, classes), the grid's rows.
    """
    if spec.image_size < GRADCAM_MIN_IMAGE_SIZE:
        logger.info("the report's grid shows no Grad-CAM: at %d px the last feature map is a single cell "
                    "(from %d px it has 2 x 2)", spec.image_size, GRADCAM_MIN_IMAGE_SIZE)
        return None
    from image_classifier import explain  # Captum, only when there is a report to draw

    model = spec.create_model()
    model.load_state_dict(state_dict)
    model.to(device).eval()

    def draw(rows: list[int], images: list) -> list:
        return explain.overlays(model, spec.arch, images, [int(probabilities[r].argmax()) for r in rows],
                                spec.mean, spec.std)

    return plots.Overlays(draw, "Over each image, the Grad-CAM heat-map of the predicted class (Selvaraju et al. "
                                "2017, arXiv:1610.02391): red where the evidence for it is strongest, blue where "
                                "there is none.")


def measure_precisions(folder: Path, spec: artifacts.ModelSpec, paths: list[str],
                       targets: np.ndarray) -> dict[str, dict]:
    """The report's rows per precision: each exported model in `folder` (`export.export`'s) over
    the images `paths` (through the eval transforms, as the server's requests), in batches of
    the server's default MODEL_SERVER_MAX_BATCH; `targets` (N,) int64 their class ids.

    Returns:
        per precision (fp32, bf16, int8), `metrics.precision_row`'s figures, `agreement` being
        with the exported fp32 model's top-1.

    Raises:
        RuntimeError, OSError, ValueError: a model or an image could not be read, or no image.
    """
    transform = eval_transform(spec.image_size, spec.mean, spec.std)
    batches = (np.stack([transform(open_image(path)).numpy() for path in paths[i:i + DEFAULT_MAX_BATCH]])
               for i in range(0, len(paths), DEFAULT_MAX_BATCH))
    outputs = export.predict_each(folder, batches)
    reference = outputs[runtime.LOSSLESS][0].argmax(axis=1)
    return {precision: precision_row(probabilities, targets, reference, seconds, runtime.native(precision))
            for precision, (probabilities, seconds) in outputs.items()}


def _precisions_or_none(exported: Path | None, spec: artifacts.ModelSpec, channel: str, paths: list[str],
                        targets: np.ndarray) -> dict[str, dict]:
    """`measure_precisions` of the exported models; {} without an export, or, with the reason
    logged, when the measurement failed (the report goes on without its rows)."""
    if exported is None:
        return {}
    try:
        rows = measure_precisions(exported, spec, paths, targets)
    except Exception:
        logger.exception("the exported models' precisions could not be measured (the report goes on without them)")
        return {}
    return rows


def write_report(env: SageMakerEnv, spec: artifacts.ModelSpec, channel: str, loader: DataLoader,
                 predictions: Predictions, state_dict: dict, device: torch.device,
                 exported: Path | None = None) -> None:
    """The evaluation report of the model (`spec`, `state_dict`) on `channel`, in output/data/evaluation
    (rank 0), its grid with Grad-CAM overlays (`gradcam_overlays`), and with `exported` (the
    folder of `export.export`) a row per precision of the exported models (`measure_precisions`);
    baseline.json holds each image's prediction, size and brightness (`baseline.figures`).

    `predictions`: the channel's (probabilities, targets, dataset indices) from `gathered`.
    A report that fails is logged, not raised: the model artifacts are written already, and
    they are what the job is for; so is a failed measurement of the precisions (no rows).
    """
    probabilities, targets, indices = predictions
    if not distributed.is_main():
        return
    directory = env.output_data_dir / REPORT_DIR
    try:
        paths, view = sample_paths(env, channel, loader, spec.class_names), eval_view(spec.image_size)
        precisions = _precisions_or_none(exported, spec, channel, [paths[i] for i in indices], targets)
        overlays = gradcam_overlays(spec, state_dict, probabilities, device)
        figures = baseline.figures(probabilities, (open_image(paths[i]) for i in indices))  # for drift reports
        summary = evaluation_report.write(directory, probabilities, targets, spec.class_names, channel,
                                          lambda row: view(open_image(paths[indices[row]])), overlays,
                                          precisions=precisions, baseline=figures)
    except Exception:
        logger.exception("the evaluation report could not be written (the model artifacts were)")
        return
    logger.info("evaluation of the %s channel, %d images: accuracy %.4f, top-%d accuracy %.4f, macro F1 %.4f, "
                "weighted F1 %.4f, ECE %.4f; report in %s\n%s", channel, summary["images"], summary["accuracy"],
                summary["top_k"], summary["top_k_accuracy"], summary["macro_f1"], summary["weighted_f1"],
                summary["ece"], directory, format_table(summary))
    for precision, row in summary["precisions"].items():
        logger.info("precision %s on the %s channel, %d images: top-1 %.4f, macro F1 %.4f, agreement with fp32 "
                    "%.4f, ECE %.4f, %.1f images/s in-process (batches of %d, %s)", precision, channel,
                    summary["images"], row["accuracy"], row["macro_f1"], row["agreement"], row["ece"],
                    row["images_per_second"], DEFAULT_MAX_BATCH,
                    "native" if row["native"] else "emulated: this CPU lacks its instructions")
