"""The shapes of the hub's identifiers, defined once: Hub repo ids, pinned commits and sha256 digests.

Example:
    >>> bool(REPO_ID.fullmatch("lightning-dnn/digits-mlp")), bool(REPO_ID.fullmatch("digits-mlp"))
    (True, False)
    >>> bool(COMMIT.fullmatch("0" * 40)), bool(SHA256.fullmatch("f" * 64))
    (True, True)
"""

from __future__ import annotations

import re

__all__ = ["COMMIT", "REPO_ID", "SHA256"]

#: A Hub repository id, ``org/name`` (the Hub's own rule allows letters, digits, ``-``, ``_`` and ``.``).
REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
#: A full git commit sha, as the zoo index pins it and the Hub cache names snapshots: 40 lowercase hex digits.
COMMIT = re.compile(r"[0-9a-f]{40}")
#: A sha256 hex digest, as the zoo index pins each file: 64 lowercase hex digits.
SHA256 = re.compile(r"[0-9a-f]{64}")
