"""The seed report's augmentations: back-translated caption versions (this package) and the
time mask (applied by the dataset, see :mod:`amr.data.dataset`)."""
