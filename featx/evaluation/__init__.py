"""Measuring: metrics of a split, decision thresholds, intervals and paired tests."""
