"""``python -m bench``: the fleet benchmark, as ``iothub bench`` runs it."""

import sys

from .fleet import main

sys.exit(main())
