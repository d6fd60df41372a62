"""Artifacts: the on-disk format of trained models (one sidecar for heads and fine-tunes), and loaded predictors."""
