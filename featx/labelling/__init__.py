"""Which images to label next (strategies, featx suggest) and which labels look wrong (featx audit), on a
backbone's cached frozen features. Above heads (a model strategy and the audit train heads), below studies."""
