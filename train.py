#!/usr/bin/env python
"""Train a density model (``genood-train``): see genood/commands/train.py."""
import sys

from genood.commands.train import main

if __name__ == "__main__":
    sys.exit(main())
