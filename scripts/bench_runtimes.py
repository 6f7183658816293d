#!/usr/bin/env python3
"""CPU inference runtimes side by side (eager, TorchScript, OpenVINO fp32/bf16/int8): forward passes in one run.

`scripts/bench_runtimes.py --help`. TorchScript, the server's runtime before issue 18, is kept
here beside the script (torchscript_reference.py), outside the package.
"""
import sys

from torchscript_reference import optimize

from image_classifier.benchmarks.runtimes import main

sys.exit(main(torchscript=optimize))
