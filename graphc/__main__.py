"""``python -m graphc``: the command-line runner (same as the ``graphc`` console script)."""

import sys

from runtime.cli import main

if __name__ == "__main__":
    sys.exit(main())
