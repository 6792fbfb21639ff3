"""The defaults of `vqt export` and `vqt serve`, importable without torch (the CLI's help texts read them)."""

from __future__ import annotations

from dataclasses import dataclass

EXPORT_FORMATS = ("onnx", "torch-export")
EXPORT_TOLERANCE = 1e-4  # max |logit difference| accepted against PyTorch (fp32)

MAX_BODY_BYTES = 20 * 2**20
MAX_PIXELS = 40_000_000  # 40 MP: a 20000 x 20000 image (400 MP) is refused before it is decoded
MIN_SIDE = 2
MAX_IMAGES_PER_REQUEST = 64


@dataclass
class ServeSettings:
    """How `vqt serve` batches and what it accepts."""

    max_batch: int = 16
    max_wait_ms: float = 5.0
    max_body_bytes: int = MAX_BODY_BYTES
    max_pixels: int = MAX_PIXELS
    min_side: int = MIN_SIDE
    default_top_k: int = 5
    precision: str = "fp32"
