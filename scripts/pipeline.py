#!/usr/bin/env python3
"""Create, update and start the project's SageMaker Pipeline: `scripts/pipeline.py --help`."""
import sys

from image_classifier.launch.pipeline import main

sys.exit(main())
