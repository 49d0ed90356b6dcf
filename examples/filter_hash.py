"""SHA-256 of the learned filters of trained runs (the filter tensor bytes, layer by layer), to
check that a change to the code left the results bit-identical.

    python examples/filter_hash.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

import hashlib
import sys

import deconvnet as dn


def filter_hash(run) -> str:
    net = dn.DeconvNet.load(run)
    h = hashlib.sha256()
    for layer in net.layers_:
        h.update(layer.filters_.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(run, filter_hash(run))
