#!/usr/bin/env python3
"""The feature cache against training on images, side by side: `scripts/bench_training.py --help`."""
import sys

from image_classifier.benchmarks.training import main

sys.exit(main())
