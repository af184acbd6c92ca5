"""Launch MAML Lab: `python main.py` (see `python main.py --help`)."""

import sys

from maml_lab.app import main

if __name__ == "__main__":
    sys.exit(main())
