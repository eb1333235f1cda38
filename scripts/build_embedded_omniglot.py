#!/usr/bin/env python
"""Build the compact Omniglot subset embedded in ``pml_grouploss/datasets/data/``.

Run once, from the repository root, with the two MIT-licensed archives of the Omniglot authors
(https://github.com/brendenlake/omniglot, ``python/images_background_small1.zip`` and
``python/images_background_small2.zip``)::

    python scripts/build_embedded_omniglot.py images_background_small1.zip \
        images_background_small2.zip [--license LICENSE]

It writes ``pml_grouploss/datasets/data/omniglot_small_28.npz`` (uint8 images, 28x28, ink = 255)
and copies the license next to it. Greek and Latin appear in both archives with identical files;
each (alphabet, character, drawer) is kept once, and the script checks that duplicates really are
byte-identical images. The preprocessing is exactly ``pml_grouploss.datasets.omniglot.preprocess``,
which the ``Omniglot`` class also applies when it reads a full torchvision-layout directory, so the
embedded subset and a user's own copy give identical arrays.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shutil
import sys
import zipfile

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from pml_grouploss.datasets.omniglot import EMBEDDED_FILE, preprocess  # noqa: E402

PATTERN = re.compile(r"^[^/]+/([^/]+)/(character\d+)/(\d+)_(\d+)\.png$")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("zips", nargs="+", help="Omniglot archives (images_background_small*.zip)")
    parser.add_argument("--license", default=None, help="the Omniglot LICENSE file to copy")
    parser.add_argument("--out", default=EMBEDDED_FILE, help="output .npz (default: %(default)s)")
    args = parser.parse_args(argv)

    items = {}  # (alphabet, character, drawer) -> (image id, raw png bytes)
    for path in args.zips:
        with zipfile.ZipFile(path) as zf:
            for name in sorted(zf.namelist()):
                m = PATTERN.match(name)
                if m is None:
                    continue
                alphabet, character, image_id, drawer = m.groups()
                key = (alphabet, character, int(drawer))
                raw = zf.read(name)
                if key in items:
                    old_id, old_raw = items[key]
                    a = np.asarray(Image.open(io.BytesIO(old_raw)).convert("L"))
                    b = np.asarray(Image.open(io.BytesIO(raw)).convert("L"))
                    if old_id != int(image_id) or not np.array_equal(a, b):
                        raise SystemExit(f"duplicate {key} differs between archives: {name}")
                    continue
                items[key] = (int(image_id), raw)

    keys = sorted(items)
    alphabets = sorted({k[0] for k in keys})
    characters = sorted({(k[0], k[1]) for k in keys})
    char_index = {c: i for i, c in enumerate(characters)}
    images = np.stack([preprocess(Image.open(io.BytesIO(items[k][1]))) for k in keys])
    np.savez_compressed(
        args.out,
        images=images,
        alphabet=np.array([alphabets.index(k[0]) for k in keys], dtype=np.int16),
        character=np.array([char_index[(k[0], k[1])] for k in keys], dtype=np.int16),
        drawer=np.array([k[2] for k in keys], dtype=np.int16),
        image_id=np.array([items[k][0] for k in keys], dtype=np.int16),
        alphabet_names=np.array(alphabets),
        character_names=np.array([f"{a}/{c}" for a, c in characters]),
    )
    if args.license:
        shutil.copyfile(args.license, os.path.join(os.path.dirname(args.out), "LICENSE"))
    print(
        f"wrote {args.out}: {len(keys)} images, {len(characters)} characters, "
        f"{len(alphabets)} alphabets, {os.path.getsize(args.out) / 1e6:.2f} MB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
