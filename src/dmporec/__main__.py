"""`python -m dmporec` runs the command-line interface."""

import sys

from dmporec.cli import main

sys.exit(main())
