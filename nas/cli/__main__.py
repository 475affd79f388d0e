"""``python -m nas.cli``: the command line in a fresh interpreter (what worker processes run)."""

import sys

from nas.cli import main

sys.exit(main())
