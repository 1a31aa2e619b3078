"""Cost of accepting one upload into the media library (mailer.campaigns.media.process_image:
decode, verify, strip, narrow to 1200 px, re-encode), per kind of image.

    .venv/bin/python bench/media.py            # 5 runs of each image

Images are made here: a 12-megapixel JPEG photo of noise (the worst case for JPEG, ~8 MB,
with EXIF and GPS), a 4000 × 3000 PNG screenshot-like image, a 600 × 400 animated GIF of 30
frames, and a decompression bomb (12000 × 12000 PNG of ~150 KB, refused). Reported: the
median and slowest seconds of each.
"""
from __future__ import annotations

import io
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import git_state, load_average, use_project_python  # noqa: E402

use_project_python()

from PIL import Image, ImageDraw  # noqa: E402

from mailer.campaigns import media  # noqa: E402
from mailer.errors import InvalidInput  # noqa: E402

LIMITS = {"max_bytes": 10 * 1024 * 1024, "max_pixels": 40_000_000}


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **options)
    return out.getvalue()


def photo() -> bytes:
    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (51.0, 30.0, 12.5)}
    return saved(Image.effect_noise((4000, 3000), 40).convert("RGB"), "JPEG", quality=92, exif=exif.tobytes())


def screenshot() -> bytes:
    image = Image.new("RGB", (4000, 3000), "white")
    draw = ImageDraw.Draw(image)
    for y in range(0, 3000, 40):
        draw.rectangle((100, y, 3900, y + 20), fill=(30, 90, 160))
    return saved(image, "PNG")


def animation() -> bytes:
    frames = [Image.new("RGB", (600, 400), (i * 8, 80, 120)) for i in range(30)]
    return saved(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)


def bomb() -> bytes:
    return saved(Image.new("L", (12000, 12000), 0), "PNG")


def main() -> None:
    print(f"# {git_state()}; load average {load_average()}")
    for name, make in (("12 MP JPEG photo", photo), ("4000x3000 PNG", screenshot), ("30-frame GIF", animation),
                       ("decompression bomb", bomb)):
        data = make()
        times, outcome = [], ""
        for _ in range(5):
            start = time.perf_counter()
            try:
                result = media.process_image(data, **LIMITS)
                outcome = f"{result.width}x{result.height} {result.mime}, {len(result.data) // 1024} KB"
            except InvalidInput as exc:
                outcome = f"refused: {exc.message[:40]}…"
            times.append(time.perf_counter() - start)
        print(f"{name:20} {len(data) // 1024:>6} KB in  median {statistics.median(times):.3f} s  "
              f"slowest {max(times):.3f} s  → {outcome}")


if __name__ == "__main__":
    main()
