"""The README's main job (``./run.sh demo``): offline, on data that ships with scikit-learn.

Runs :mod:`finetune_digits`: pulls the lower layers of the zoo's ``digits-mlp-classes0-4`` network (served from
this clone's ``zoo/`` folder, sha256-verified; from the Hub at the pinned commit when the folder is absent),
freezes them, trains new upper layers for digits 5-9 on cached frozen-layer outputs, and prints a results table
against training from scratch.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from finetune_digits import main

if __name__ == "__main__":
    main()
