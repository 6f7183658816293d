"""The `image-classifier` command: prepare-data, download-weights, predict, transform, demo, report, tune, drift."""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from pathlib import Path

import requests

from image_classifier import datasets
from image_classifier.client import explain, format_answer, predict
from image_classifier.launch import metrics
from image_classifier.launch.exit_codes import FAILED, INTERRUPTED, USAGE, exit_on
from image_classifier.transform import DEFAULT_RETRIES, backoff_seconds, transform
from image_classifier.tuning import PRUNERS


@exit_on({ValueError: FAILED, OSError: FAILED, requests.RequestException: FAILED})
def _prepare_data(args: argparse.Namespace) -> int:
    if args.if_missing and datasets.has_dataset(args.output):
        print(f"{args.output} already holds a dataset: left as it is")
        return 0
    if args.source == "sample":
        counts = datasets.write_sample(args.output, seed=args.seed)
        print(f"wrote the handwritten-digit sample to {args.output}: {json.dumps(counts)}")
    elif args.source == "fashion-mnist":
        counts = datasets.prepare_fashion_mnist(
            args.output, source_dir=args.fashion_mnist_dir, per_class=args.per_class,
            valid_per_class=args.valid_per_class, test_per_class=args.test_per_class, seed=args.seed,
            keep_downloads=args.keep_downloads)
        print(f"wrote Fashion-MNIST to {args.output}: {json.dumps(counts)}")
    else:
        datasets.prepare_dogimages(args.output, url=args.url, sha256=args.sha256)
        print(f"dog-breed images unpacked to {args.output}/{{train,valid,test}}")
    return 0


@exit_on({ValueError: FAILED, RuntimeError: FAILED})  # RuntimeError: PretrainedWeightsUnavailable, a misfit file
def _download_weights(args: argparse.Namespace) -> int:
    from image_classifier.models import load_pretrained_state_dict

    for name in args.models:
        load_pretrained_state_dict(name)  # downloads into the model's cache unless it is there
    return 0


@exit_on({RuntimeError: FAILED, OSError: FAILED, requests.RequestException: FAILED})  # OSError: an unreadable image
def _predict(args: argparse.Namespace) -> int:
    if args.explain_class and not args.explain:
        print("error: --explain-class needs --explain OVERLAY.png", file=sys.stderr)
        return USAGE
    paths: list[Path] = []
    if args.explain:
        predictions, paths = explain(args.url, args.image, args.explain, args.top_k, args.explain_class)
    else:
        predictions = predict(args.url, args.image, args.top_k)
    print(format_answer(predictions))
    for path in paths:
        print(f"Grad-CAM overlay written to {path}")
    return 0


@exit_on({ValueError: USAGE, OSError: FAILED})
def _transform(args: argparse.Namespace) -> int:
    try:
        summary = transform(args.input, args.output, args.url, args.concurrency, args.top_k, args.retries)
    except KeyboardInterrupt:
        print(f"interrupted: {args.output} holds every row written; rerun to do the rest", file=sys.stderr)
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(INTERRUPTED)  # the pool's threads may be retrying: do not wait for them
    if summary.skipped == summary.files:
        print(f"all {summary.files} files are already in {args.output}: nothing to do")
        return 0
    print(f"{args.output}: {summary.ok} scored, {summary.refused} refused (error rows), {summary.failed} failed, "
          f"of {summary.files} files ({summary.skipped} already there); {summary.retried} answered after "
          f"retries; {summary.concurrency} requests at a time, {summary.seconds:.1f} s")
    if summary.interrupted:
        print("interrupted: the files not sent have no row; rerun to do them", file=sys.stderr)
        return INTERRUPTED
    if summary.failed:
        print(f"error: {summary.failed} files failed after retries; rerun to retry them", file=sys.stderr)
        return FAILED
    return 0


def _demo(args: argparse.Namespace) -> int:
    from image_classifier.demo import run_demo

    return run_demo(data_dir=args.data, base_dir=args.base_dir, port=args.port)


def _report(args: argparse.Namespace) -> int:
    from image_classifier.reports import main as rebuild_reports

    return rebuild_reports(args.source, args.out)


def _drift(args: argparse.Namespace) -> int:
    from image_classifier.drift.report import main as drift_report

    return drift_report(args.capture, args.report, args.out, args.json, args.labels)


@exit_on({ValueError: USAGE, OSError: USAGE})
def _tune(args: argparse.Namespace) -> int:
    from image_classifier.launch.common import parse_static
    from image_classifier.tuning.report import BEST_FILE, best_trial
    from image_classifier.tuning.study import tune

    ranges = args.search_space
    if ranges is not None and not ranges.lstrip().startswith("{"):
        ranges = Path(ranges).read_text()
    study, outputs, interrupted = tune(
        args.data, args.output, parse_static(args.hyperparameter), objective=args.objective,
        max_trials=args.max_trials, parallel=args.parallel, pruner=args.pruner,
        include_model=args.include_model, search_space_json=ranges, storage=args.storage,
        study_name=args.study_name, seed=args.seed, wait_for_workers=args.wait)
    print(outputs["table"])
    best = outputs["best"]
    if best is not None:
        attrs = best_trial(study).user_attrs
        elsewhere = f" on {attrs['host']}" if attrs.get("host", socket.gethostname()) != socket.gethostname() else ""
        print(f"best: {best['training_job']} {best['objective']}={best['objective_value']:.6g}; "
              f"hyperparameters in {args.output / BEST_FILE}, model in {attrs['trial_dir']}/model{elsewhere}")
    print(f"study {study.study_name}: table, trials.csv and plots/ in {args.output}")
    return INTERRUPTED if interrupted else 0 if best is not None else FAILED


def _add_prepare_data(sub: argparse._SubParsersAction) -> None:
    """`prepare-data`: the sample digits, Fashion-MNIST or the dog-breed images as ImageFolder trees."""
    p = sub.add_parser("prepare-data", help="write a dataset as train/valid/test ImageFolder trees")
    p.add_argument("--source", choices=("sample", "dogimages", "fashion-mnist"), default="sample",
                   help="sample: scikit-learn's bundled handwritten digits (offline); "
                        "dogimages: download the Udacity dog-breed set; "
                        "fashion-mnist: Zalando's 28x28 article photos, 10 classes, as RGB PNGs "
                        "(from --fashion-mnist-dir, else downloaded)")
    p.add_argument("--output", type=Path, default=Path("data"), help="dataset root (default: ./data)")
    p.add_argument("--url", default=datasets.DOGIMAGES_URL, help="dogimages: download URL (default: %(default)s)")
    p.add_argument("--sha256", default=None, help="dogimages: expected SHA-256 of the zip")
    p.add_argument("--seed", type=int, default=0, help="sample, fashion-mnist: seed of the train/valid/test split")
    p.add_argument("--per-class", type=int, default=None, metavar="N",
                   help="fashion-mnist: train images per class (default: all that valid leaves, 5,900)")
    p.add_argument("--valid-per-class", type=int, default=100, metavar="N",
                   help="fashion-mnist: valid images per class, from the training set (default: %(default)s)")
    p.add_argument("--test-per-class", type=int, default=None, metavar="N",
                   help="fashion-mnist: test images per class (default: all 1,000, the full test set)")
    p.add_argument("--fashion-mnist-dir", type=Path, default=datasets.FASHION_MNIST_DIR, metavar="DIR",
                   help="fashion-mnist: folder of the four IDX .gz files; files missing there are downloaded "
                        "(default: %(default)s, Debian's dataset-fashion-mnist package)")
    p.add_argument("--keep-downloads", action="store_true",
                   help="fashion-mnist: keep downloaded .gz files in OUTPUT/.downloads")
    p.add_argument("--if-missing", action="store_true", help="do nothing when OUTPUT/train holds class folders")
    p.set_defaults(func=_prepare_data)


def _add_download_weights(sub: argparse._SubParsersAction) -> None:
    """`download-weights`: ImageNet weights into the models' caches."""
    p = sub.add_parser("download-weights", help="put models' ImageNet weights in their caches (torchvision's: "
                                                "$TORCH_HOME; timm's: the Hugging Face cache, $HF_HOME), e.g. when "
                                                "building an image for jobs without internet")
    p.add_argument("models", nargs="+", metavar="MODEL",
                   help="registry model names, e.g. resnet50 timm/convnext_tiny.fb_in22k_ft_in1k")
    p.set_defaults(func=_download_weights)


def _add_predict(sub: argparse._SubParsersAction) -> None:
    """`predict`: one image (or a batch file) to a server, the top-k printed; Grad-CAM with --explain."""
    p = sub.add_parser("predict", help="send an image to a model server and print the top-k")
    p.add_argument("image", type=Path)
    p.add_argument("--url", default="http://localhost:8080", help="server root (default: %(default)s)")
    p.add_argument("--top-k", type=int, default=5)
    p.add_argument("--explain", type=Path, default=None, metavar="OVERLAY.png",
                   help="also write the Grad-CAM heat-map of the top class over the image, as the model saw it, "
                        "to this PNG (a batch file: OVERLAY-0.png, OVERLAY-1.png, ...)")
    p.add_argument("--explain-class", default=None, metavar="LABEL",
                   help="with --explain: the class to explain instead of the top one")
    p.set_defaults(func=_predict)


def _add_transform(sub: argparse._SubParsersAction) -> None:
    """`transform`: every image under a folder to a server, into a CSV."""
    p = sub.add_parser("transform", help="score every image under a folder against a model server into a CSV, "
                                         "like SageMaker Batch Transform; a rerun does only the files missing")
    p.add_argument("--input", type=Path, required=True, metavar="DIR", help="folder of images, walked recursively")
    p.add_argument("--output", type=Path, required=True, metavar="CSV",
                   help="results CSV (key,label,class_id,probability,top_k,error), appended to")
    p.add_argument("--url", default="http://localhost:8080", help="server root (default: %(default)s)")
    p.add_argument("--concurrency", type=int, default=None, metavar="N",
                   help="requests at a time (default: the server's MaxConcurrentTransforms, else 4)")
    p.add_argument("--top-k", type=int, default=5, metavar="K",
                   help="predictions per file in top_k (default: %(default)s)")
    p.add_argument("--retries", type=int, default=DEFAULT_RETRIES, metavar="R",
                   help="retries of a request on a 5xx or connection error (default: %(default)s, "
                        f"{backoff_seconds(DEFAULT_RETRIES):.0f} s of backoff: a server restart)")
    p.set_defaults(func=_transform)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    """`demo`: the local end-to-end run (`demo.run_demo`)."""
    p = sub.add_parser("demo", help="Fashion-MNIST photos → fine-tuning job → server → predictions, all local")
    p.add_argument("--data", type=Path, default=Path("local/fashion-mnist"),
                   help="dataset root (default: ./local/fashion-mnist, written unless it holds a dataset)")
    p.add_argument("--base-dir", type=Path, default=Path("local/opt_ml"),
                   help="the /opt_ml layout to run in (default: ./local/opt_ml)")
    p.add_argument("--port", type=int, default=8080)
    p.set_defaults(func=_demo)


def _add_report(sub: argparse._SubParsersAction) -> None:
    """`report`: a job's debugger and profiler reports, rebuilt."""
    p = sub.add_parser("report", help="rebuild a training job's debugger and profiler reports and print the rules")
    p.add_argument("source", help="the job's output: a folder (output/data), an output.tar.gz, "
                                  "or s3://.../output.tar.gz or s3://BUCKET/PREFIX/JOB/")
    p.add_argument("--out", type=Path, default=None,
                   help="where the reports go (default: the folder itself, else ./reports)")
    p.set_defaults(func=_report)


def _add_tune(sub: argparse._SubParsersAction) -> None:
    """`tune`: a local tuning study with Optuna (`tuning.study.tune`)."""
    p = sub.add_parser("tune", help="tune hyperparameters on this machine: the cloud tuner's search space "
                                    "with Optuna, each trial a real training job")
    p.add_argument("--data", type=Path, required=True, help="ImageFolder root with train/, valid/ and test/")
    p.add_argument("--output", type=Path, default=Path("tuning"),
                   help="study database, trials/<training job>/ (each an /opt/ml tree), table, "
                        "best_hyperparameters.json, plots/ (default: ./tuning)")
    p.add_argument("--max-trials", type=int, default=8,
                   help="trials this command runs; workers sharing a study through --storage each run this "
                        "many, and the study gets the sum (default: %(default)s)")
    p.add_argument("--parallel", type=int, default=2, help="training jobs at a time (default: %(default)s)")
    p.add_argument("--objective", default="valid_accuracy", choices=tuple(metrics.OBJECTIVES))
    p.add_argument("--pruner", default="hyperband", choices=PRUNERS,
                   help="stop unpromising trials on their per-epoch objective (default: %(default)s)")
    p.add_argument("--hyperparameter", action="append", default=[], metavar="KEY=VALUE",
                   help="a static hyperparameter of every trial (repeatable), e.g. pretrained=false")
    p.add_argument("--search-space", default=None, metavar="JSON",
                   help="ranges that override or add to the defaults: JSON text, or a file holding it")
    p.add_argument("--include-model", action="store_true", help="tune the model too (all of the registry)")
    p.add_argument("--storage", default=None,
                   help="Optuna storage (an SQLAlchemy database URL), e.g. "
                        "postgresql+psycopg://USER:PASSWORD@HOST:5432/DB to share a study between workers "
                        "on several machines, each started with the same --storage and --study-name "
                        "(default: sqlite:///OUTPUT/study.db)")
    p.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                   help="once its own trials ended, wait for the trials other workers of the study still run, "
                        "so that every worker reports the whole study; a worker whose trial heartbeat "
                        "stopped counts as dead and its trials FAIL (default: wait)")
    p.add_argument("--study-name", default=None,
                   help="continue this study if the storage has it, else create it (default: ic-local-<time>)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the TPE sampler (Optuna reseeds it per thread: reproducible only with --parallel 1)")
    p.set_defaults(func=_tune)


def _add_drift(sub: argparse._SubParsersAction) -> None:
    """`drift`: an endpoint's captured traffic against the test channel (`drift.report`)."""
    p = sub.add_parser("drift", help="compare what an endpoint saw (SageMaker data capture) with the test channel "
                                     "of the training job's evaluation report: class mix, confidence, calibration, "
                                     "image size and brightness; a page, JSON and a verdict")
    p.add_argument("--capture", required=True, metavar="S3_PREFIX_OR_DIR",
                   help="the captured .jsonl files: s3://BUCKET/PREFIX (every file below it, e.g. "
                        "DESTINATION/ENDPOINT/VARIANT/2026/12) or a local folder or file")
    p.add_argument("--report", required=True, metavar="SOURCE",
                   help="the evaluation report: its metrics.json (with baseline.json beside it), its folder, the "
                        "job's output folder or output.tar.gz, or s3://.../JOB/ (its output/output.tar.gz)")
    p.add_argument("--labels", type=Path, default=None, metavar="FILE",
                   help="true classes of captured requests, JSON Lines in Model Monitor's ground-truth format "
                        "(groundTruthData.data; eventMetadata.inferenceId where the capture has one, else "
                        "eventId): adds accuracy and calibration")
    p.add_argument("--out", type=Path, default=Path("drift.html"), help="the page (default: %(default)s); "
                                                                        "its PNGs go beside it")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the figures as JSON")
    p.set_defaults(func=_drift)


def build_parser() -> argparse.ArgumentParser:
    """The `image-classifier` parser: one subcommand each, its handler in `func` (see `main`)."""
    parser = argparse.ArgumentParser(prog="image-classifier", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_prepare_data, _add_download_weights, _add_predict, _add_transform, _add_demo, _add_report,
                _add_tune, _add_drift):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
