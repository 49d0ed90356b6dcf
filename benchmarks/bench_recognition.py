"""The cost of every stage of the recognition protocol, per image, and its projection to one
split of the full Caltech-101 at 30 training images per class (issue 13's target: within 1
hour on 2 CPU cores).

Measured side by side in one run on ``--images`` images of a class-per-folder dataset
(default ``../shared/data/caltech101-mini``; without it, scikit-image's photos, which have no
classes, so only the per-image stages are timed):

- DN maps of layers 1 and 2, with the layers' own iteration caps and with ``--caps`` (an
  inference-only cap per layer, as ``deconvnet caltech --infer-iters``);
- DN descriptors (layers 1, 2, 1+2 from the same maps) and dense SIFT;
- for one split at full size (3030 training images, up to 8080 in all: 101 classes x (30 +
  at most 50)): the codebook (k-means on ``max_descriptors`` descriptors), encoding per image,
  the intersection kernels (real pyramid vectors of these images, resampled to the full
  counts: the cost depends on their sparsity) and the SVM.

The network is ``--model`` (a run or model file with >= 2 layers), else the ``calibrated``
preset trained here on 10 of the images (the protocol's own network; its time is printed).

    python benchmarks/bench_recognition.py [--data DIR] [--model PATH] [--images 40] [--caps 30,10] [--threads N] [--json F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from common import environment, parse
from sklearn.svm import SVC

import deconvnet as dn
from deconvnet.config import apply_overrides, preset
from deconvnet.recognition import (DNDescriptors, PyramidEncoder, SiftDescriptors, intersection_kernel,
                                   network_images, read_class_folders)

FULL_TRAIN, FULL_IMAGES, FULL_CLASSES = 3030, 8080, 101


def sample_photos(n: int) -> list[np.ndarray]:
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import rescale
    from skimage.util import img_as_float

    out = []
    for name in ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "page", "brick", "grass"):
        im = img_as_float(getattr(data, name)())
        im = rgb2gray(im[..., :3]) if im.ndim == 3 else im
        out.append(rescale(im, 150 / max(im.shape), anti_aliasing=True))
    return [out[i % len(out)] for i in range(n)]


def timed(fn, items) -> tuple[list, float]:
    t0 = time.perf_counter()
    out = [fn(x) for x in items]
    return out, (time.perf_counter() - t0) / len(items)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "caltech101-mini"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--images", type=int, default=40)
    ap.add_argument("--caps", default="30,10", help="inference iteration caps of layers 1,2 (default 30,10)")
    ap.add_argument("--max-descriptors", type=int, default=50_000)
    args = parse(ap, device=False, json=True)
    caps = tuple(int(c) for c in args.caps.split(","))
    env = environment("cpu")
    print(f"# {env}")
    rows, labels, items = [], None, None
    if Path(args.data).is_dir():
        ds = read_class_folders(args.data, check=False)
        pick = network_images(ds.labels, min(args.images, len(ds.paths)), seed=1)
        items, labels = [ds.paths[i] for i in pick], ds.labels[pick]
        train_on = items[:10]
        print(f"# {len(items)} images of {args.data}, spread over {len(set(labels.tolist()))} classes")
    else:
        items = sample_photos(args.images)
        train_on = items[:10]
        print(f"# {args.data} absent: {len(items)} scikit-image photos at 150 px (no classes: per-image stages only)")
    if args.model:
        net = dn.DeconvNet.load(args.model)
        print(f"# network: {args.model}")
    else:
        t0 = time.perf_counter()
        net = dn.DeconvNet(apply_overrides(preset("calibrated", 2), ["max_side=150"])).fit(train_on)
        train_s = time.perf_counter() - t0
        rows.append(("network training (calibrated, 2 layers, 10 images)", train_s, None, train_s))
        print(f"# network: calibrated, 2 layers, trained here on 10 images in {train_s:.1f} s")

    own = DNDescriptors(net, "dn12")
    capped = DNDescriptors(net, "dn12", max_iter=caps)
    warm = DNDescriptors(net, "dn12", max_iter=(1, 1))
    for x in items:  # the operator paths of every size measured once, before either side is timed
        warm.maps_one(x)
    maps_own, t_own = timed(lambda x: own.maps_one(x)[0], items)
    maps_cap, t_cap = timed(lambda x: capped.maps_one(x)[0], items)
    rows.append(("DN maps, layers 1-2, the layers' own iterations", t_own, FULL_IMAGES, t_own * FULL_IMAGES))
    rows.append((f"DN maps, layers 1-2, iterations capped at {caps}", t_cap, FULL_IMAGES, t_cap * FULL_IMAGES))
    rel = [float(((a[l] - b[l]).norm() / a[l].norm().clamp_min(1e-30))) for a, b in zip(maps_own, maps_cap)
           for l in range(2)]
    descs = {}
    for f in ("dn1", "dn2", "dn12"):
        d = DNDescriptors(net, f)
        descs[f], t = timed(d.describe, maps_cap)
        rows.append((f"{f} descriptors from the maps", t, FULL_IMAGES, t * FULL_IMAGES))
    sift = SiftDescriptors(150)
    descs["sift"], t = timed(lambda x: sift.transform([x])[0], items)
    rows.append(("dense SIFT descriptors", t, FULL_IMAGES, t * FULL_IMAGES))

    split_rows = []
    if labels is not None:
        rng = np.random.default_rng(0)
        for f, D in descs.items():
            t0 = time.perf_counter()
            # the codebook sees max_descriptors descriptors whatever the dataset's size: resample to that count
            pool = np.concatenate([d.values for d in D]).astype(np.float32)
            sample = pool[rng.integers(0, len(pool), min(args.max_descriptors, FULL_TRAIN * len(D[0])))]
            enc = PyramidEncoder(200, 3, max_descriptors=len(sample)).fit(
                [type(D[0])(sample, np.zeros((len(sample), 2)))])
            t_codebook = time.perf_counter() - t0
            H, t_enc = timed(lambda d, enc=enc: enc.transform([d])[0], D)
            H = np.stack(H)
            rows_train = H[rng.integers(0, len(H), FULL_TRAIN)]
            rows_all = H[rng.integers(0, len(H), FULL_IMAGES - FULL_TRAIN)]
            t0 = time.perf_counter()
            K_train = intersection_kernel(rows_train, rows_train)
            K_test = intersection_kernel(rows_all, rows_train)
            t_kernel = time.perf_counter() - t0
            y = np.arange(FULL_TRAIN) % FULL_CLASSES
            t0 = time.perf_counter()
            SVC(kernel="precomputed", C=10.0).fit(K_train, y).predict(K_test)
            t_svm = time.perf_counter() - t0
            total = t_codebook + t_enc * FULL_IMAGES + t_kernel + t_svm
            split_rows.append((f, t_codebook, t_enc, t_kernel, t_svm, total))

    print(f"\n{'stage':<58}{'s/image':>10}{'images':>8}{'full split s':>14}")
    for name, per, n, full in rows:
        print(f"{name:<58}{per:>10.4f}{n if n else '':>8}{full:>14.1f}")
    print(f"# capped vs own maps: median relative difference {np.median(rel):.3f}, max {np.max(rel):.3f}")
    if split_rows:
        print(f"\n# one full-size split ({FULL_TRAIN} training, {FULL_IMAGES - FULL_TRAIN} test images, 200 words, "
              f"3 levels): seconds")
        print(f"{'feature':<8}{'codebook':>10}{'encode/img':>12}{'kernels':>10}{'svm':>8}{'total':>10}")
        for f, a, b, c, d, e in split_rows:
            print(f"{f:<8}{a:>10.1f}{b:>12.4f}{c:>10.1f}{d:>8.1f}{e:>10.1f}")
        dn_total = t_cap * FULL_IMAGES + sum(r[3] for r in rows if "descriptors" in r[0]) + \
            sum(r[5] for r in split_rows)
        print(f"# projected, one full split, all four features (capped maps, excluding network training): "
              f"{dn_total / 60:.1f} min")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"env": env, "stages": rows, "split": split_rows, "caps": caps,
                       "capped_relative_difference": rel}, fh, indent=1)


if __name__ == "__main__":
    main()
