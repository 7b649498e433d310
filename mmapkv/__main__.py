"""``python -m mmapkv``: the command line (see :mod:`mmapkv.cli`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
