"""``python -m cedana``: the command line."""

import sys

from cedana.cli import main

sys.exit(main())
