"""Submitting SageMaker work with the project's images: metric definitions, search space, launchers."""
