"""From a trained network to moments: a batch through the network (``batch``), the decoders that
form moments from its outputs (``decoders``), score calibration (``calibration``), and answering
queries on recordings or whole splits (``predictor``)."""
