"""Fine-tune and serve torchvision image classifiers in SageMaker containers."""
