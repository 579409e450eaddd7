"""``python -m ipdrl``: the ipdrl command line."""

import sys

from ipdrl.commands import main

sys.exit(main())
