"""``python -m structsparse``: the ``structsparse`` command (see :mod:`structsparse.cli`)."""

import sys

from .cli import main

sys.exit(main())
