"""`python -m cgflow.cli`."""

import sys

from cgflow.cli import app

sys.exit(app())
