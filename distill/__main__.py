"""`python -m distill` runs the command line."""

import sys

from distill.cli import main

sys.exit(main())
