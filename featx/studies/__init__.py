"""Diagnostics computed over saved models and caches: split shift and robustness to corruptions.

Above heads and fine-tuning (they train or load those), below reporting, which only formats them.
"""
