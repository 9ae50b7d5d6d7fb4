"""The one decode-limit baseline of the throughput benchmarks (builder and training loader).

A tight single-process loop doing only what every image costs whatever the pipeline around it: Pillow decode
(JPEGs with the same ``Image.draft`` DCT scaling the training loader applies, when ``draft_size`` is given),
RGB conversion and a bicubic resize of the shortest side to ``size`` (what the CLIP processor does before its
center crop). No real pipeline can beat it per process, so "images/s / limit" is an honest efficiency.

- the builder validates every image at full resolution: compare it with ``decode_limit(..., draft_size=None)``;
- the training loader drafts large JPEGs to the model input size: compare it with
  ``decode_limit(..., draft_size=loader_draft_size(processor))``, so like is compared with like.
"""

from __future__ import annotations

import io
import time

from PIL import Image


def loader_draft_size(processor) -> int:
    """The draft size the training loader uses for ``processor`` (``training.stream.build_train_dataset``)."""
    from modeling_georsclip.processing import crop_height

    return crop_height(processor.image_processor)


def decode_resize(data: bytes, size: int, draft_size: int | None = None) -> Image.Image:
    """Decode ``data`` (drafting JPEGs at least twice ``draft_size`` on both sides, as the loader does) and
    resize its shortest side to ``size``."""
    image = Image.open(io.BytesIO(data))
    if draft_size and image.format == "JPEG" and min(image.size) >= 2 * draft_size:
        image.draft("RGB", (draft_size, draft_size))
    image = image.convert("RGB")
    scale = size / min(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def decode_limit(encoded: list[bytes], size: int = 224, draft_size: int | None = None,
                 seconds: float = 3.0) -> float:
    """Images/s of :func:`decode_resize` over ``encoded`` (at least one pass and ``seconds``), one process."""
    for data in encoded[: max(1, len(encoded) // 4)]:  # warm Pillow's plugins and the CPU caches
        decode_resize(data, size, draft_size)
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < len(encoded):
        decode_resize(encoded[done % len(encoded)], size, draft_size)
        done += 1
    return done / (time.perf_counter() - start)
