#!/usr/bin/env python
"""Score in-distribution, OOD and generated samples (``genood-ood``): see genood/commands/score.py."""
import sys

from genood.commands.score import main

if __name__ == "__main__":
    sys.exit(main())
