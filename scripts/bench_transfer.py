#!/usr/bin/env python3
"""Training from scratch, on a frozen backbone and fine-tuned, side by side on Fashion-MNIST.

`scripts/bench_transfer.py --help`.
"""
import sys

from image_classifier.benchmarks.transfer import main

sys.exit(main())
