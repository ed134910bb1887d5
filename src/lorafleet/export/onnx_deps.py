"""The ONNX exports' optional dependencies (the `edge` extra), imported where they are first needed.

`import lorafleet.export` must work without them, so every ONNX module imports onnx, onnxscript and
onnxruntime through `require`, which turns a missing one into an `ExportError` that says how to install it.
"""

from __future__ import annotations

import importlib
import logging
from types import ModuleType

from lorafleet.errors import ExportError


def require(module: str) -> ModuleType:
    """`import module` (onnx, onnxscript, onnxruntime or one of their submodules), or an `ExportError`.

    The root logger is left as it was: some of ONNX Runtime's modules call `logging.basicConfig(level=INFO)`
    on import, which would print every library's INFO lines from then on.
    """
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    try:
        return importlib.import_module(module)
    except ImportError as err:
        package = module.split(".")[0]
        raise ExportError(
            f"ONNX export needs {package}, which is not installed: pip install 'lorafleet[edge]'"
        ) from err
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
