#!/usr/bin/env python3
"""Start a SageMaker hyperparameter tuning job on the training image: `scripts/tune.py --help`."""
import sys

from image_classifier.launch.tune import main

sys.exit(main())
