#!/usr/bin/env python3
"""CPU inference runtimes side by side (eager, TorchScript, OpenVINO fp32/bf16/int8): forward passes in one run.

`scripts/bench_runtimes.py --help`.
"""
import sys

from image_classifier.benchmarks.runtimes import main

sys.exit(main())
