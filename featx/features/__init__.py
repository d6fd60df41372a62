"""Features: the HDF5 cache, its identity, extraction (sharded under torchrun) and FeatureExtractor."""
