"""Subprocesses of a ``LIGHTNING_DNN_TEST_PACKAGE=lightning`` test run alias pytorch_lightning too."""

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))

if os.environ.get("LIGHTNING_DNN_TEST_PACKAGE", "").strip() == "lightning":
    sys.path.insert(0, os.path.dirname(os.path.dirname(_HERE)))
    from tests._lightning_alias import install

    install()

for _entry in sys.path:  # run the sitecustomize this one shadows (e.g. the distribution's), if any
    _candidate = os.path.join(_entry, "sitecustomize.py")
    if os.path.abspath(_entry or ".") != _HERE and os.path.isfile(_candidate):
        with open(_candidate) as _file:
            exec(compile(_file.read(), _candidate, "exec"), {"__name__": "sitecustomize", "__file__": _candidate})
        break
