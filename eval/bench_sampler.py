"""Sampler throughput and overhead on a tiny ModernBERT: how much of a step is not the forward.

A thin wrapper over `jointobj bench` (jointobj/cli/bench.py, where the options are documented).
"""

import sys

from jointobj.cli.bench import main

if __name__ == "__main__":
    main(sys.argv[1:])
