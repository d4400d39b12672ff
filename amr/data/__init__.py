"""Data layer: official annotations, CLAP features, the packed store and the synthetic dataset."""
