"""``python -m xrename CMD ARGS...`` is ``xrename -- CMD ARGS...``."""

import sys

from xrename import main

sys.exit(main())
