#!/usr/bin/env python3
"""The model server against its limit, the TorchScript server before issue 18 and a baseline server,
side by side: `scripts/bench_serving.py --help`."""
import sys
from pathlib import Path

import torchscript_reference

from image_classifier.benchmarks.serving import Reference, main

HERE = Path(__file__).resolve().parent

sys.exit(main(reference=Reference(HERE, torchscript_reference.APP, torchscript_reference.load_predictor)))
