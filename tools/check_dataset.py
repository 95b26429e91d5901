#!/usr/bin/env python
"""Validate a TBX11K-format data set and print a report.

Usage: python tools/check_dataset.py DATA_ROOT [ANN_FILE ...]
Exit status: 1 when errors were found, 0 otherwise (warnings allowed).
"""
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this repo's tbx11k

from tbx11k.datasets.check import main  # noqa: E402

if __name__ == '__main__':
    sys.exit(main())
