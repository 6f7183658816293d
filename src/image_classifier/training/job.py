"""One SageMaker training job: channels in, best-on-validation model artifacts and metrics out."""

from __future__ import annotations

import json
import logging
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from image_classifier import artifacts, models
from image_classifier.debugging.debugger import Debugger
from image_classifier.evaluation import REPORT_DIR
from image_classifier.evaluation import plots
from image_classifier.evaluation import report as evaluation_report
from image_classifier.evaluation.metrics import format_table, macro_f1
from image_classifier.images import open_image
from image_classifier.profiling.profiler import Profiler
from image_classifier.profiling.steps import NO_TIMER, NoTimer
from image_classifier.sagemaker_env import SageMakerEnv
from image_classifier.training import METRICS_FILE, TrainingInterrupted, data, distributed, features
from image_classifier.training.config import TrainConfig
from image_classifier.training.loop import Meter, Outputs, evaluate, train_one_epoch
from image_classifier.transforms import eval_transform, eval_view, resize_size, train_transform

logger = logging.getLogger(__name__)

CHECKPOINT_FILE = "checkpoint.pt"
PRETRAINED_CHANNEL = "pretrained"


@dataclass
class JobState:
    """What a checkpoint holds besides model, optimizer and scheduler states."""

    epoch: int = 0                     # epochs completed
    step: int = 0                      # steps done in the epoch in progress (0 = at a boundary)
    meter: dict = field(default_factory=dict)   # Meter of the epoch in progress
    best_accuracy: float = -1.0
    best_loss: float = float("inf")
    best_epoch: int = 0
    best_state: dict | None = None     # model state_dict of the best epoch, on the CPU
    epochs_without_improvement: int = 0
    history: list = field(default_factory=list)  # one metrics dict per completed epoch


def format_metrics(metrics: dict[str, float]) -> str:
    """`name=value` pairs, the form the cloud metric definitions' regexes read."""
    return " ".join(f"{k}={v:.6g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items())


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def _device_and_amp(config: TrainConfig) -> tuple[torch.device, torch.dtype | None]:
    if not torch.cuda.is_available():
        return torch.device("cpu"), None
    amp = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if config.amp else None
    return distributed.device(), amp  # ddp: cuda:LOCAL_RANK


def _num_workers(config: TrainConfig) -> int:
    return min(4, os.cpu_count() or 1) if config.num_workers < 0 else config.num_workers


def build_model(config: TrainConfig, num_classes: int, env: SageMakerEnv) -> nn.Module:
    """The registry model with its new head; ImageNet weights when `pretrained`; the backbone frozen
    when it is in the first epoch (`set_stage`)."""
    state_dict = None
    if config.pretrained:
        state_dict = models.load_pretrained_state_dict(config.model, env.channel_dir(PRETRAINED_CHANNEL))
    elif config.freeze == "backbone":
        logger.warning("freeze=backbone with pretrained=false trains a head on random features")
    model = models.create_model(config.model, num_classes, config.dropout, state_dict,
                                head_hidden=config.hidden_sizes, head_activation=config.head_activation)
    set_stage(model, config, epoch=1)
    return model


def set_stage(model: nn.Module, config: TrainConfig, epoch: int) -> bool:
    """Train mode for `epoch` (1-based); returns whether the backbone is frozen in it.

    A frozen backbone (freeze=backbone, or the first `head-epochs` of freeze=none) has no
    gradients and stays in eval mode: its BatchNorm layers normalise with, and keep, the
    pretrained running statistics, while the head trains.
    """
    frozen = config.backbone_frozen(epoch)
    model.requires_grad_(not frozen)
    model.train(not frozen)
    head = models.head_module(model, config.model)
    head.requires_grad_(True)
    head.train()
    return frozen


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """The optimizer's parameter groups: the head at `lr`; with freeze=none the backbone at
    `lr x backbone-lr-scale` (discriminative learning rates, Howard and Ruder 2018, arXiv:1801.06146)."""
    head = list(models.head_module(model, config.model).parameters())
    groups = [{"params": head, "lr": config.lr}]
    if config.freeze == "none":
        in_head = {id(p) for p in head}
        groups.append({"params": [p for p in model.parameters() if id(p) not in in_head],
                       "lr": config.lr * config.backbone_lr_scale})
    return groups


def _make_optimizer(config: TrainConfig, groups: list[dict]) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    cls = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=config.lr, weight_decay=config.weight_decay)


def lr_factors(config: TrainConfig, steps_per_epoch: int) -> list[Callable[[int], float]]:
    """Per parameter group (`param_groups`' order), the factor of its learning rate at each step.

    Cosine annealing over the job's steps (`lr-scheduler=cosine`; Loshchilov and Hutter 2017,
    arXiv:1608.03983, without restarts), times a linear warm-up over `warmup-epochs` from the
    step the group starts training: the head at once, the backbone after `head-epochs`.
    """
    total = max(1, config.epochs * steps_per_epoch)
    warmup = config.warmup_epochs * steps_per_epoch

    def factor(first_epoch: int) -> Callable[[int], float]:
        start = first_epoch * steps_per_epoch

        def at(step: int) -> float:
            warm = min(1.0, (step - start + 1) / warmup) if warmup else 1.0
            cosine = 0.5 * (1 + math.cos(math.pi * step / total)) if config.lr_scheduler == "cosine" else 1.0
            return max(0.0, warm) * cosine
        return at

    factors = [factor(0)]
    if config.freeze == "none":
        factors.append(factor(min(config.head_epochs, config.epochs)))
    return factors


def class_weights(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """scikit-learn's `class_weight="balanced"`: n / (classes x count) per class, float32 (classes,);
    0 for a class without training images."""
    counts = torch.bincount(targets.long(), minlength=num_classes).float()
    return torch.where(counts > 0, targets.numel() / (num_classes * counts.clamp(min=1)), torch.zeros_like(counts))


class Checkpointer:
    """Saves and restores the whole job state in the checkpoint dir (managed spot training)."""

    def __init__(self, directory: Path, identity: dict[str, Any]):
        self.path = directory / CHECKPOINT_FILE
        self.identity = identity  # config and classes: a checkpoint of another job is not resumed

    def save(self, state: JobState, model, optimizer, scheduler, scaler) -> None:
        if not distributed.is_main():  # ddp: one writer
            return
        artifacts.atomic_torch_save({
            "identity": self.identity, "job": vars(state), "model": model.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict(), "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }, self.path)

    def restore(self, model, optimizer, scheduler, scaler) -> JobState:
        """The saved state, loaded into the given objects; a fresh JobState if none fits."""
        if not self.path.is_file():
            return JobState()
        saved = torch.load(self.path, map_location="cpu", weights_only=True)
        if saved.get("identity") != self.identity:
            logger.warning("checkpoint %s is from a job with other hyperparameters or classes: "
                           "starting afresh", self.path)
            return JobState()
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        scaler.load_state_dict(saved["scaler"])
        torch.set_rng_state(saved["rng"])
        if saved["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(saved["cuda_rng"])
        state = JobState(**saved["job"])
        logger.info("resuming from checkpoint %s: epoch %d, step %d", self.path, state.epoch + 1, state.step)
        return state


def _write_metrics(env: SageMakerEnv, state: JobState, test: dict[str, float] | None) -> None:
    if not distributed.is_main():  # ddp: one writer
        return
    summary = {"epochs": state.history, "best_epoch": state.best_epoch, "best_valid_accuracy": state.best_accuracy,
               "best_valid_loss": state.best_loss, "best_valid_f1": _best_f1(state)}
    if test is not None:
        summary.update(test)
    artifacts.atomic_write_bytes(env.output_data_dir / METRICS_FILE, json.dumps(summary, indent=2).encode())


def _best_f1(state: JobState) -> float | None:
    """The best epoch's valid_f1 (None from a checkpoint of a version that did not log it)."""
    return next((e.get("valid_f1") for e in state.history if e["epoch"] == state.best_epoch), None)


def find_channels(env: SageMakerEnv) -> tuple[dict[str, Path], list[str]]:
    """The channels (train, valid, and test if present) and their class folder names.

    Raises:
        FileNotFoundError: the train or valid channel is missing.
        ValueError: channels with different classes.
    """
    channels = data.resolve_channels(env.channel_dir)
    if data.VALID not in channels:
        raise FileNotFoundError(f"no valid (or validation) channel at {env.channel_dir(data.VALID)}: "
                                f"the best weights are chosen on it")
    return channels, data.class_names_of(channels)


def make_loaders(config: TrainConfig, channels: dict[str, Path], class_names: list[str],
                 pin_memory: bool) -> dict[str, DataLoader]:
    """One DataLoader of images per channel; train gets the train transforms if `augment`.

    Raises:
        ValueError: a channel without readable images.
    """
    workers = _num_workers(config)
    norm = models.data_config(config.model)
    loaders = {}
    for name, path in channels.items():
        is_train = name == data.TRAIN
        transform = (train_transform(config.image_size, config.crop_scale_min, config.hflip_prob, norm.mean, norm.std)
                     if is_train and config.augment else eval_transform(config.image_size, norm.mean, norm.std))
        dataset = data.ImageFolderChannel(path, class_names, transform, seed=config.seed, channel=name)
        if len(dataset) == 0:
            raise ValueError(f"the {name} channel ({path}) has no readable images")
        loaders[name] = data.make_loader(dataset, distributed.per_rank_batch(config.batch_size), workers,  # ddp
                                         is_train, config.seed, pin_memory, **distributed.shard())
    return loaders


def make_feature_loaders(env: SageMakerEnv, config: TrainConfig, channels: dict[str, Path],
                         class_names: list[str], model: nn.Module, device: torch.device,
                         amp_dtype: torch.dtype | None) -> dict[str, DataLoader]:
    """One DataLoader of cached backbone features per channel (see `training.features`).

    Under DDP the processes of one machine share its checkpoint dir: the first computes the
    features, the others wait on the cache's lock and read them.

    Raises:
        ValueError: a channel without readable images.
    """
    if config.augment:
        logger.warning("feature-cache=on: the train channel's features are computed once with the eval "
                       "transforms, so augmentation (augment=true) is not applied")
    cached = features.load_or_compute(
        env.checkpoint_dir, channels, class_names, model, config.model, config.image_size,
        config.batch_size, _num_workers(config), config.seed, device, amp_dtype, device.type == "cuda")
    return {name: data.make_loader(dataset, distributed.per_rank_batch(config.batch_size), 0, name == data.TRAIN,
                                   config.seed, pin_memory=False, collate_fn=features.as_batch, **distributed.shard())
            for name, dataset in cached.items()}


def _end_epoch(state: JobState, epoch: int, model: nn.Module, train: Meter, valid: dict[str, float]) -> dict:
    """Record the epoch's figures and keep the best weights (valid accuracy, then loss on ties)."""
    improved = (valid["accuracy"], -valid["loss"]) > (state.best_accuracy, -state.best_loss)
    if improved:
        state.best_accuracy, state.best_loss, state.best_epoch = valid["accuracy"], valid["loss"], epoch
        state.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    state.epochs_without_improvement = 0 if improved else state.epochs_without_improvement + 1
    figures = train.metrics()
    line = {"epoch": epoch, "train_loss": figures["loss"], "train_accuracy": figures["accuracy"],
            "valid_loss": valid["loss"], "valid_accuracy": valid["accuracy"], "valid_f1": valid["f1"],
            "epoch_seconds": train.seconds, "images_per_second": figures["images_per_second"]}
    state.history.append(line)
    state.epoch, state.step, state.meter = epoch, 0, {}
    return line


def run(env: SageMakerEnv, config: TrainConfig, should_stop: Callable[[], bool] = lambda: False) -> dict:
    """Run the training job described by `env` and `config`.

    Returns:
        the final metrics: `test_loss`/`test_accuracy`/`test_f1` when there is a test channel, and the
        best epoch's validation figures.

    Raises:
        FileNotFoundError, ValueError: see `find_channels` and `make_loaders`.
        models.PretrainedWeightsUnavailable: pretrained=true and no weights to be had.
        TrainingInterrupted: `should_stop()` turned true; a checkpoint was saved first.
        debugging.hook.DebugUnavailable: debugging asked for and smdebug cannot provide it.
    """
    _seed_everything(config.seed)
    distributed.check_config(config)  # ddp
    device, amp_dtype = _device_and_amp(config)
    logger.info("training on %s%s with %s", device, f" ({amp_dtype})" if amp_dtype else "", config.to_dict())
    # None unless asked for; they fail here, not mid-job
    debugger = Debugger.create(env, config.debug or bool(config.stop_on_rules), config.stop_on_rules)
    profiler = Profiler.create(env, config.profile, device, _num_workers(config))
    evaluate_rules = True  # not after SIGTERM: SageMaker kills the job soon after it
    try:
        if profiler:
            profiler.start()
        return _run(env, config, device, amp_dtype, debugger, profiler.timer if profiler else NO_TIMER, should_stop)
    except TrainingInterrupted:
        evaluate_rules = False
        raise
    finally:
        if profiler:
            profiler.close(evaluate_rules)
        if debugger:
            debugger.close(evaluate_rules)


def _model_and_data(env: SageMakerEnv, config: TrainConfig, device: torch.device,
                    amp_dtype: torch.dtype | None) -> tuple[list[str], nn.Module, nn.Module, dict[str, DataLoader]]:
    """The class names, the model, what trains, and the loaders.

    What trains is the whole model on images, or only its head on cached backbone features
    (`feature-cache`); the head shares its parameters with the model, which is what the job
    checkpoints and saves either way.
    """
    channels, class_names = find_channels(env)
    model = build_model(config, len(class_names), env).to(device)
    if config.channels_last and device.type == "cuda":
        model.to(memory_format=torch.channels_last)  # NHWC: tensor-core convolutions, no transposes
    if config.uses_feature_cache:
        loaders = make_feature_loaders(env, config, channels, class_names, model, device, amp_dtype)
        return class_names, model, models.head_module(model, config.model), loaders
    return class_names, model, model, make_loaders(config, channels, class_names, pin_memory=device.type == "cuda")


def _run(env: SageMakerEnv, config: TrainConfig, device: torch.device, amp_dtype: torch.dtype | None,
         debugger: Debugger | None, timer: NoTimer, should_stop: Callable[[], bool]) -> dict:
    hook = debugger.hook if debugger else None
    class_names, model, trainable, loaders = _model_and_data(env, config, device, amp_dtype)

    # loss, optimizer, schedule (stepped every step), and where a restarted job left off
    criterion = _criterion(config, loaders[data.TRAIN].dataset.targets, len(class_names), device)
    eval_criterion = nn.CrossEntropyLoss()
    optimizer = _make_optimizer(config, param_groups(model, config))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factors(config, len(loaders[data.TRAIN])))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    checkpointer = Checkpointer(env.checkpoint_dir, {"config": config.to_dict(), "classes": class_names})
    state = checkpointer.restore(model, optimizer, scheduler, scaler)
    if hook:
        if config.freeze == "none":  # smdebug hooks the gradients of the parameters that require one now
            model.requires_grad_(True)  # (each epoch's set_stage freezes the backbone again where it should)
        hook.register(trainable, criterion, eval_criterion)
    train_module, frozen = None, None

    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        loaders[data.TRAIN].sampler.set_epoch(epoch, state.step * loaders[data.TRAIN].batch_size)
        stage = set_stage(model, config, epoch)
        if train_module is None or stage != frozen:  # the first epoch, or a new stage
            frozen = stage
            if config.freeze == "none":
                logger.info("epoch %d: %s", epoch, "the head alone trains (head-epochs)" if frozen else
                            "the whole network trains")
            train_module = _train_module(trainable, config)
        train = train_one_epoch(train_module, loaders[data.TRAIN], criterion, optimizer, device, scaler, amp_dtype,
                                Meter(**distributed.local_meter(state.meter)), should_stop, hook, timer,
                                scheduler=scheduler)
        train = distributed.settle_epoch(model, train)  # ddp: the job's figures, rank 0's buffers
        if should_stop():
            state.step, state.meter = train.steps, train.state_dict()
            checkpointer.save(state, model, optimizer, scheduler, scaler)
            raise TrainingInterrupted(f"stopped by SIGTERM in epoch {epoch} after step {train.steps}; "
                                      f"checkpoint saved to {checkpointer.path}, a restarted job resumes from it")
        outputs = Outputs()
        valid = evaluate(trainable, loaders[data.VALID], eval_criterion, device, amp_dtype, hook, timer=timer,
                         reduce=distributed.all_reduce_meter, outputs=outputs)
        probabilities, targets, _ = _gathered(loaders[data.VALID], outputs)
        valid["f1"] = macro_f1(probabilities.argmax(axis=1), targets)
        line = _end_epoch(state, epoch, model, train, valid)
        checkpointer.save(state, model, optimizer, scheduler, scaler)
        logger.info(format_metrics(line))  # ddp: ranks other than 0 log warnings only
        _write_metrics(env, state, None)
        if config.early_stopping_patience and state.epochs_without_improvement >= config.early_stopping_patience:
            logger.info("early stopping: no better valid_accuracy for %d epochs", state.epochs_without_improvement)
            break
        if debugger and (fired := debugger.end_epoch(epoch)):
            logger.info("stopping training after epoch %d: rule(s) %s fired (debug-stop-on)", epoch, ", ".join(fired))
            break

    # the best weights are the model: test them, then write the artifacts
    model.load_state_dict(state.best_state)
    distributed.check_in_sync(model)  # ddp
    result = {"best_epoch": state.best_epoch, "valid_loss": state.best_loss, "valid_accuracy": state.best_accuracy,
              "valid_f1": _best_f1(state)}
    # the report's channel: test, else valid again (its predictions with the best weights); the
    # debugger watches the test pass only (predict mode)
    channel, outputs, test = data.TEST if data.TEST in loaders else data.VALID, Outputs(), None
    metrics = evaluate(trainable, loaders[channel], eval_criterion, device, amp_dtype,
                       hook if channel == data.TEST else None, hook_mode="predict",
                       reduce=distributed.all_reduce_meter, outputs=outputs)
    predictions = _gathered(loaders[channel], outputs)  # ddp: every rank
    if channel == data.TEST:
        test = {"test_loss": metrics["loss"], "test_accuracy": metrics["accuracy"],
                "test_f1": macro_f1(predictions[0].argmax(axis=1), predictions[1])}
        logger.info(format_metrics(test))
        result.update(test)
    _save_artifacts(env, config, class_names, state.best_state)
    _write_metrics(env, state, test)
    _write_report(env, config, class_names, channel, loaders[channel], predictions, state.best_state, device)
    return result


def _criterion(config: TrainConfig, targets, num_classes: int, device: torch.device) -> nn.Module:
    """The training loss: cross-entropy with label smoothing, weighted per class when `class-weighting=balanced`
    (`targets`: the train channel's class ids, a list or tensor)."""
    weight = None
    if config.class_weighting == "balanced":
        weight = class_weights(torch.as_tensor(targets), num_classes).to(device)
        logger.info("class-weighting=balanced: loss weights from %.3g to %.3g", weight.min(), weight.max())
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.label_smoothing)


def _train_module(trainable: nn.Module, config: TrainConfig) -> nn.Module:
    """What runs the training steps: DDP over `trainable` under torchrun (over the parameters that
    train in this stage), compiled if asked; wrappers that share its parameters, so the model keeps
    its state_dict keys."""
    train_module = distributed.wrap(trainable)
    if config.compile:
        logger.info("compiling the trained module with torch.compile (the first steps take longer)")
        train_module = torch.compile(train_module)
    return train_module


def _gathered(loader: DataLoader, outputs: Outputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The whole channel's (probabilities, targets, dataset indices) of an evaluation pass, in dataset order.

    ddp: every rank's shard, gathered (a collective: every rank calls it).
    """
    probabilities, targets = outputs.arrays()
    indices = np.array([index for _, index in loader.sampler], dtype=np.int64)  # the pass's order
    probabilities, targets, indices = distributed.gather_arrays(probabilities, targets, indices)
    order = np.argsort(indices, kind="stable")
    return probabilities[order], targets[order], indices[order]


def _sample_paths(env: SageMakerEnv, channel: str, loader: DataLoader, class_names: list[str]) -> list[str]:
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


# The backbones downsample by 32: below 64 px their last feature map is 1x1, and a Grad-CAM
# heat-map of it is flat, with nothing to say about where (see explain.target_layer).
GRADCAM_MIN_IMAGE_SIZE = 64


def _gradcam_overlays(config: TrainConfig, class_names: list[str], state_dict: dict, probabilities: np.ndarray,
                      device: torch.device) -> plots.Overlays | None:
    """The predictions grid's Grad-CAM: each image with the heat-map of its predicted class.

    Computed by a fresh model holding `state_dict` (the saved weights), in eval mode on
    `device`: no debugger hooks, no DDP wrapper. None below `GRADCAM_MIN_IMAGE_SIZE`.
    """
    if config.image_size < GRADCAM_MIN_IMAGE_SIZE:
        logger.info("the report's grid shows no Grad-CAM: at %d px the last feature map is a single cell "
                    "(from %d px it has 2 x 2)", config.image_size, GRADCAM_MIN_IMAGE_SIZE)
        return None
    from image_classifier import explain  # Captum, only when there is a report to draw

    spec = _model_spec(config, class_names)
    model = spec.create_model()
    model.load_state_dict(state_dict)
    model.to(device).eval()

    def draw(rows: list[int], images: list) -> list:
        return explain.overlays(model, config.model, images, [int(probabilities[r].argmax()) for r in rows],
                                spec.mean, spec.std)

    return plots.Overlays(draw, "Over each image, the Grad-CAM heat-map of the predicted class (Selvaraju et al. "
                                "2017, arXiv:1610.02391): red where the evidence for it is strongest, blue where "
                                "there is none.")


def _write_report(env: SageMakerEnv, config: TrainConfig, class_names: list[str], channel: str,
                  loader: DataLoader, predictions: tuple[np.ndarray, np.ndarray, np.ndarray], state_dict: dict,
                  device: torch.device) -> None:
    """The evaluation report of the model (`state_dict`) on `channel`, in output/data/evaluation
    (rank 0), its grid with Grad-CAM overlays (`_gradcam_overlays`).

    `predictions`: the channel's (probabilities, targets, dataset indices) from `_gathered`.
    A report that fails is logged, not raised: the model artifacts are written already, and
    they are what the job is for.
    """
    probabilities, targets, indices = predictions
    if not distributed.is_main():
        return
    directory = env.output_data_dir / REPORT_DIR
    try:
        paths, view = _sample_paths(env, channel, loader, class_names), eval_view(config.image_size)
        overlays = _gradcam_overlays(config, class_names, state_dict, probabilities, device)
        summary = evaluation_report.write(directory, probabilities, targets, class_names, channel,
                                          lambda row: view(open_image(paths[indices[row]])), overlays)
    except Exception:
        logger.exception("the evaluation report could not be written (the model artifacts were)")
        return
    logger.info("evaluation of the %s channel, %d images: accuracy %.4f, top-%d accuracy %.4f, macro F1 %.4f, "
                "weighted F1 %.4f, ECE %.4f; report in %s\n%s", channel, summary["images"], summary["accuracy"],
                summary["top_k"], summary["top_k_accuracy"], summary["macro_f1"], summary["weighted_f1"],
                summary["ece"], directory, format_table(summary))


def _model_spec(config: TrainConfig, class_names: list[str]) -> artifacts.ModelSpec:
    """What serving needs to rebuild the model: its head, and the normalisation of its pretrained weights."""
    norm = models.data_config(config.model)
    return artifacts.ModelSpec(
        arch=config.model, num_classes=len(class_names), class_names=class_names,
        labels=[data.label_of(c) for c in class_names], image_size=config.image_size,
        resize_size=resize_size(config.image_size), mean=list(norm.mean), std=list(norm.std),
        dropout=config.dropout, head_hidden=list(config.hidden_sizes), head_activation=config.head_activation)


def _save_artifacts(env: SageMakerEnv, config: TrainConfig, class_names: list[str], state_dict: dict) -> None:
    if not distributed.is_main():  # ddp: one writer
        return
    artifacts.save_model(env.model_dir, state_dict, _model_spec(config, class_names))
    logger.info("model artifacts written to %s", env.model_dir)
