"""`python -m segkd`: the command line with the interpreter at hand (how the workflow's jobs call it)."""

import sys

from segkd.cli import main

sys.exit(main())
