"""``amr-train``: a run (``run``) of stages (``stage``), alone or N seeds stacked (``stacked``), the
Lightning module (``module``), the config schema (``config``), the pre-training cache, loggers,
what happens before Hydra starts a job (``launch``) and how runs are named (``naming``)."""
