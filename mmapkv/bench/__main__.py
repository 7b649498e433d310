"""``python -m mmapkv.bench``: run the benchmark (see :mod:`mmapkv.bench`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
