"""``python -m conure``: the same as the ``conure`` command."""

from conure.cli import entry

if __name__ == "__main__":
    entry()
