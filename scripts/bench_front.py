#!/usr/bin/env python3
"""What nginx in front of gunicorn costs a request: /ping and /invocations p50 with and without it, in one run.

`scripts/bench_front.py --help`.
"""
import sys

from image_classifier.benchmarks.front import main

sys.exit(main())
