#!/usr/bin/env python3
"""The overhead of debug=true and profile=true on a training job, side by side: `scripts/bench_debug.py --help`."""
import sys

from image_classifier.benchmarks.debug_overhead import main

sys.exit(main())
