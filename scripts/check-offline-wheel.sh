#!/usr/bin/env bash
# Release check (issue 14): the built wheel, installed in a clean virtual environment
# from a local folder of wheels, segments with the shipped `nuclei` model while the
# network is cut off. What an offline lab does: `pip download` on a connected machine,
# carry the folder over, `pip install --no-index --find-links FOLDER`.
#
# Needs `unshare` (util-linux) and root, or a user namespace, to cut the network.
# Usage: bash scripts/check-offline-wheel.sh [PYTHON]   (default: python3)
set -euo pipefail

python="${1:-python3}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$python" -m pip wheel --quiet --no-deps -w "$work/dist" "$root"
wheel="$(ls "$work"/dist/*.whl)"
unzip -l "$wheel" | grep -q "napari_unet/models/nuclei.pt" || {
    echo "the wheel lacks napari_unet/models/nuclei.pt" >&2
    exit 1
}
"$python" -m venv "$work/venv"
# torch pinned to the CPU build, as the Makefile does.
"$work/venv/bin/python" -m pip download --quiet -d "$work/wheels" torch==2.13.0 "$wheel"

# From here on, no network.
unshare -n "$work/venv/bin/python" -m pip install --quiet --no-index \
    --find-links "$work/wheels" "$wheel"
"$work/venv/bin/python" -c "
import tifffile
from napari_unet.synthetic import make_touching_nuclei
tifffile.imwrite('$work/image.tif', make_touching_nuclei((256, 256), seed=3)[0])
"
unshare -n "$work/venv/bin/napari-unet" segment nuclei "$work/image.tif" -o "$work/out"
"$work/venv/bin/python" -c "
import numpy as np, tifffile
labels = tifffile.imread('$work/out/image.tif')
count = len(np.unique(labels)) - 1
assert count > 10, f'only {count} objects'
print(f'offline install segments with the shipped model: {count} objects')
"
