"""The README's main job (``./run.sh demo``): offline, on data that ships with scikit-learn.

Runs :mod:`sparse_digits`: FTRL-Proximal + L1 trains a sparse classifier on the embedded digits data and prints
test accuracy and the fraction of exactly-zero weights next to a dense Adam run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sparse_digits import main

if __name__ == "__main__":
    main()
