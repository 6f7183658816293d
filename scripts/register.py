#!/usr/bin/env python3
"""Register a model in SageMaker's Model Registry, approve or reject one: `scripts/register.py --help`."""
import sys

from image_classifier.launch.registry import main

sys.exit(main())
