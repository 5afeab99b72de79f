"""``python -m dagengine``: the command line (see :mod:`dagengine.cli`)."""

import sys

from dagengine.cli import main

sys.exit(main())
