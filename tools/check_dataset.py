#!/usr/bin/env python
"""Validate a TBX11K-format data set and print a report.

Usage: python tools/check_dataset.py DATA_ROOT [ANN_FILE ...]
Exit status: 1 when errors were found, 0 otherwise (warnings allowed).
"""
import sys

from tbx11k.datasets.check import main

if __name__ == '__main__':
    sys.exit(main())
