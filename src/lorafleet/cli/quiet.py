"""Keep third-party chatter out of the command's output, so an `error:` line is the only line of an error.

Set up before anything imports torch, PEFT or bitsandbytes: the noise comes at import time. Only messages
meant for library authors, or about fallbacks lorafleet never relies on, are dropped; lorafleet's own
output, the errors it raises, and anything else a library logs stay as they are.
"""

from __future__ import annotations

import logging
import warnings

# Loggers whose warnings are noise to someone running lorafleet: (logger name, why).
NOISY_LOGGERS: tuple[tuple[str, str], ...] = (
    (
        "bitsandbytes.backends.cpu",
        "on a CPU with AVX512-BF16, importing bitsandbytes (which `import peft` does) fetches an optional "
        "4-bit CPU kernel from the Hub and warns when it may not (untrusted publisher, offline, no network); "
        "bitsandbytes then uses its own kernel",
    ),
    (
        "kernels",
        "the Hub-kernel loader behind that fetch warns that offline mode skips its publisher check",
    ),
    (
        "torch.onnx._internal.exporter._registration",
        "`lorafleet export --format onnx`: torch's exporter warns, once per operator, that torchvision's "
        "operators (nms, roi_align, …) are skipped because torchvision is not installed; no LLM uses them",
    ),
    (
        "onnxruntime.quantization",
        "the int8 quantizer logs two INFO lines per matrix it quantizes (hundreds per export)",
    ),
)


def quiet_third_party_output() -> None:
    """Silence the `NOISY_LOGGERS` below ERROR, and deprecation notices meant for library authors."""
    for name, _ in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation notices from transformers/PEFT internals are for library authors, not for CLI users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
