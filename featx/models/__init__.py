"""Models: the backbone registry, weights from every source, frozen inference, the fine-tune network."""
