"""Write the bundled calibration photos in calib/photos/ from images that PyPI packages ship.

Run once when the set changes: python calib/make_photos.py. Each source photo yields the whole
image, its mirror image and four corner crops, so a dozen photos give enough distinct inputs to
calibrate activation ranges. The licence of every source is in calib/PROVENANCE.md.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.cbook
import numpy as np
import skimage.data
from PIL import Image

OUT = Path(__file__).resolve().parent / "photos"
MAX_SIDE = 384

SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "chelsea", "coffee", "grass", "gravel",
                  "hubble_deep_field", "immunohistochemistry", "retina", "rocket", "coins")
MATPLOTLIB_PHOTOS = ("grace_hopper.jpg",)


def sources() -> dict[str, Image.Image]:
    images = {}
    for name in SKIMAGE_PHOTOS:
        images[name] = Image.fromarray(np.asarray(getattr(skimage.data, name)()))
    for name in MATPLOTLIB_PHOTOS:
        with matplotlib.cbook.get_sample_data(name) as f:
            images[Path(name).stem] = Image.open(f).copy()
    return images


def variants(image: Image.Image) -> dict[str, Image.Image]:
    image = image.convert("RGB")
    image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
    w, h = image.size
    cw, ch = int(w * 0.7), int(h * 0.7)
    return {
        "full": image,
        "mirror": image.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        "crop-tl": image.crop((0, 0, cw, ch)),
        "crop-tr": image.crop((w - cw, 0, w, ch)),
        "crop-bl": image.crop((0, h - ch, cw, h)),
        "crop-br": image.crop((w - cw, h - ch, w, h)),
    }


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, image in sources().items():
        for suffix, view in variants(image).items():
            view.save(OUT / f"{name}-{suffix}.jpg", quality=90)
    print(f"wrote {len(list(OUT.glob('*.jpg')))} photos to {OUT}")


if __name__ == "__main__":
    main()
