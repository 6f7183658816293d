#!/usr/bin/env python3
"""Update a live SageMaker endpoint without downtime (traffic, blue/green, rollback).

`scripts/update_endpoint.py --help`.
"""
import sys

from image_classifier.launch.update_endpoint import main

sys.exit(main())
