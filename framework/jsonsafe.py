"""Values as strict JSON: what results, model cards and ``--json`` lines share.

``json.dumps`` writes ``NaN``/``Infinity`` for non-finite floats (not JSON) and refuses paths and 0-dim
tensors; :func:`json_safe` turns a nested result into plain JSON values first. It lives at the top of the
package because both the training layer (the model card) and the evaluation layer (``--json`` output) use it.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def json_safe(value: Any) -> Any:
    """``value`` with non-finite floats as ``None``, tuples as lists, paths as strings, 0-dim tensors unwrapped."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return json_safe(value.item())
    return value
