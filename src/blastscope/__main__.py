"""``python -m blastscope``: the command line (what ``torchrun -m blastscope train ...`` starts)."""

import sys

from blastscope.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
