"""MS-CLAP 2023 features from raw audio and text, made as the official extractors make them.

Needs the optional extra ``pip install -e .[clap]`` (msclap, soundfile, soxr). Nothing here imports
msclap until a model is loaded, so the rest of the project works without it.
"""
