"""``python -m reconciler.runner``: the entry step of a ``vault-runner`` task (see :mod:`reconciler.runner.entry`)."""

import sys

from reconciler.runner.entry import main

if __name__ == "__main__":
    sys.exit(main())
