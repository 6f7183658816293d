#!/usr/bin/env python3
"""Start a SageMaker training job with debugging and profiling on: `scripts/train_debug.py --help`."""
import sys

from image_classifier.launch.train_debug import main

sys.exit(main())
