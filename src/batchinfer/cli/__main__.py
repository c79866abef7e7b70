"""``python -m batchinfer.cli``: the same as the ``batchinfer`` command."""

import sys

from batchinfer.cli.main import main

sys.exit(main())
