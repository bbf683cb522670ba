"""``python -m nepi_dist.cli``: the ``nepi-dist`` command."""

import sys

from nepi_dist.cli import main

sys.exit(main())
