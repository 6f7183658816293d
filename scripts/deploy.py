#!/usr/bin/env python3
"""Deploy model artifacts to a SageMaker endpoint with the serving image: `scripts/deploy.py --help`."""
import sys

from image_classifier.launch.deploy import main

sys.exit(main())
