"""`python -m netagent` runs the command line."""

import sys

from netagent.cli import main

sys.exit(main())
