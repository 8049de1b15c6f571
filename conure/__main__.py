"""``python -m conure``: the same as the ``conure`` command."""
import sys

from conure.cli import main

if __name__ == "__main__":
    sys.exit(main())
