"""``amr demo``: a local web page to ask a checkpoint where a query happens in a recording, and to
compare, query by query, where the systems of finished runs put their windows (the ``demo`` extra)."""
