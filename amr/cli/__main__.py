"""``python -m amr.cli``."""

import sys

from amr.cli import main

main(sys.argv[1:])
