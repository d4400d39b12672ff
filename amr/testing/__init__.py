"""Tiny random-weight stand-ins of the hub models (MarianMT, MS-CLAP 2023), built locally, for the
tests and benchmarks on machines without hub access. Nothing else in ``amr`` imports this package."""
