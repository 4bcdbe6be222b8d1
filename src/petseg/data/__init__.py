"""Data: fetch and extract the archives, build the resized uint8 cache, and read it back for training."""
