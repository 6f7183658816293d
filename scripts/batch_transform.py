#!/usr/bin/env python3
"""Score the images under an S3 prefix with a Batch Transform job into one CSV: `scripts/batch_transform.py --help`."""
import sys

from image_classifier.launch.batch_transform import main

sys.exit(main())
