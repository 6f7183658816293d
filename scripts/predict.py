#!/usr/bin/env python3
"""Send an image to a SageMaker endpoint and print the top-k: `scripts/predict.py --help`."""
import sys

from image_classifier.launch.invoke import main

sys.exit(main())
