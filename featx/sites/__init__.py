"""Where a model will be used: a target site's images beside the training ones (shift, adaptation without
labels) and a few of its labels (featx calibrate). Above heads and fine-tuning, below studies."""
