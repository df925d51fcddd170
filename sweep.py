#!/usr/bin/env python
"""Sweeps from a meta-configuration (``genood-sweep``): see genood/commands/sweep.py."""
import sys

from genood.commands.sweep import main

if __name__ == "__main__":
    sys.exit(main())
