"""`python -m jointobj.cli ...` runs the `jointobj` console command."""

import sys

from jointobj.cli import console_main

sys.exit(console_main())
