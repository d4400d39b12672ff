"""amr: audio moment retrieval experiments on the official DCASE 2026 Task 6 baseline."""

__version__ = "0.1.0"
