"""``python -m mist.validate.cli`` is the ``mist`` command line."""

import sys

from mist.validate.cli import main

sys.exit(main())
