"""``python -m structsparse``: the ``structsparse`` command (see :mod:`structsparse.cli.main`)."""

import sys

from .cli import main

sys.exit(main())
