"""Finished runs: the run folder format (``run_folder``), runs decoded again (``rescore``), fused
(``ensemble``) and reported (``report``)."""
