"""Frequency-collapse probe: what a model predicts at positions far from any visible token.

A thin wrapper over `jointobj probe` (jointobj/cli/probe.py, where the options are documented).
"""

import sys

from jointobj.cli.probe import main

if __name__ == "__main__":
    main(sys.argv[1:])
