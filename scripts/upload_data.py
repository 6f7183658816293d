#!/usr/bin/env python3
"""Upload an ImageFolder dataset to S3 for the training channels: `scripts/upload_data.py --help`."""
import sys

from image_classifier.launch.upload import main

sys.exit(main())
