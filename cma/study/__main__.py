"""``python -m cma.study``."""

import sys

from cma.study.cli import main

sys.exit(main())
