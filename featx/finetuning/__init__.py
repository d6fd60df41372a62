"""Fine-tuning: options, freezing, the training loop, checkpoints, curves, and `finetune` itself."""
