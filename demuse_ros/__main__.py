"""``python -m demuse_ros`` is the ``demuse`` command."""

import sys

from demuse_ros.cli import main

sys.exit(main())
