"""Input: datasets and their splits, decoding rules, transforms, and the one image loader."""
