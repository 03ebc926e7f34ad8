"""``python -m demo``: see :mod:`demo`."""
import sys

from demo import main

sys.exit(main())
