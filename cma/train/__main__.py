"""``python -m cma.train``."""

import sys

from cma.train.runner import main

sys.exit(main())
