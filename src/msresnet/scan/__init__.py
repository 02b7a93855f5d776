"""``msresnet scan``: how any classifier's accuracy changes with object scale and image resolution.

:func:`run_scan` loads the models (:mod:`msresnet.scan.sources`), the labelled images (:mod:`msresnet.scan.data`),
runs both sweeps (:mod:`msresnet.scan.sweep`) and writes the report (:mod:`msresnet.scan.report`).
"""

from __future__ import annotations

from msresnet.scan.runner import run_scan
from msresnet.scan.sources import ModelSource, PreprocessOverrides, load_source

__all__ = ["ModelSource", "PreprocessOverrides", "load_source", "run_scan"]
