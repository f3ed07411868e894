"""``python -m mist`` is the ``mist`` command line."""

import sys

from mist.validate.cli import main

sys.exit(main())
