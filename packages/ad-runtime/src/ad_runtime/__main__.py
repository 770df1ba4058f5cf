"""``python -m ad_runtime``: the ``ad-runtime`` command."""

import sys

from ad_runtime.cli import main

sys.exit(main())
