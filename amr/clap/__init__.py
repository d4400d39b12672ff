"""Audio-text encoder features from raw audio and text: MS-CLAP 2023 (made as the official
extractors make them) and LAION-CLAP (through its package's own model).

Each needs its optional extra (``pip install -e .[clap]``: msclap; ``.[laion]``: laion_clap). Nothing
here imports either package until a model is loaded, so the rest of the project works without them.
"""
