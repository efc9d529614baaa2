"""One of several processes loading one zoo entry into one cache at once (run by test_hub_faults.py).

Usage: python _hub_concurrent_load.py ENDPOINT CACHE_DIR OUTPUT_JSON

The process imports everything, prints ``ready``, waits for a line on stdin (so every worker starts its download
at the same moment), loads ``zoo:a`` and writes the loaded state as JSON lists to ``OUTPUT_JSON``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from lightning_dnn.hub import load_pretrained


def main() -> None:
    endpoint, cache, output = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    print("ready", flush=True)
    sys.stdin.readline()
    net, _ = load_pretrained("zoo:a", endpoint=endpoint, cache_dir=cache)
    output.write_text(json.dumps({k: v.tolist() for k, v in net.state_dict().items()}))


if __name__ == "__main__":
    main()
