#!/usr/bin/env python3
"""The model server against its limit, the TorchScript server before issue 18 and a baseline server,
side by side: `scripts/bench_serving.py --help`."""
import sys

from image_classifier.benchmarks.serving import main

sys.exit(main())
