"""Problems shared by the benchmark scripts (no third-party data: scikit-image's samples)."""

from __future__ import annotations

import platform

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage import color, data, util

import deconvnet as dn


def highpass(img: np.ndarray, sigma: float = 4.0) -> np.ndarray:
    """Image minus its Gaussian blur, scaled to unit peak."""
    hp = img - gaussian_filter(img, sigma)
    return hp / np.abs(hp).max()


def camera_problem(side: int = 256, n_filters: int = 36, s: int = 8, seed: int = 0):
    """The coding problem of the issues: a ``side x side`` centre crop of ``camera``, high-pass
    filtered, and ``n_filters`` random unit-norm ``s x s`` filters. Returns float64 numpy
    ``y (side, side)`` and ``f (n_filters, s, s)``."""
    img = data.camera().astype(np.float64) / 255.0
    h0, w0 = (img.shape[0] - side) // 2, (img.shape[1] - side) // 2
    y = highpass(img[h0:h0 + side, w0:w0 + side])
    f = dn.init_filters(n_filters, 1, s, seed=seed, dtype=torch.float64)[:, 0].numpy()
    return y, f


def parse(ap, *, device: bool = True, json: bool = True):
    """Add the options every benchmark shares (``--threads``, ``--ops``, and ``--device`` /
    ``--json`` when asked), parse the command line, apply ``--threads``, ``--ops`` and the
    library's process-wide settings (:func:`deconvnet.runtime.configure`); returns the arguments."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--ops", default=None, metavar="PATH",
                    help="force the operator path (auto, or one of " + ", ".join(map(str, dn.paths.PATHS))
                         + "; default: DECONVNET_OPS, else auto)")
    if device:
        ap.add_argument("--device", default="cpu", help="cpu or cuda")
    if json:
        ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ops is not None:
        dn.paths.set_path(args.ops)
    dn.runtime.configure()  # a benchmark is an entry point: the library's process-wide settings
    return args


def cpu_model() -> str:
    """The CPU's model name (:func:`deconvnet.runtime.cpu_model`)."""
    return dn.runtime.cpu_model()


def environment(device: str = "cpu") -> dict:
    """What every benchmark prints first: versions, the CPU model, torch's CPU capability
    (AVX2, AVX512...), the thread count, the device and the forced operator path (if any)."""
    forced = dn.paths.forced_path()
    env = {"deconvnet": dn.__version__, "torch": torch.__version__, "cpu": cpu_model(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
           "device": device, "ops": "auto" if forced is None else str(forced), "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env


def describe_key(key: tuple) -> str:
    """A short name for the operator shape of a path choice."""
    dev, dtype, K, C, s, E, sparse, boundary, B, _, H, W = key
    conn = f"{E} edges" if sparse else "dense"
    return f"{K} maps on {C}, {s}x{s}, {conn}, {boundary}, {B}x{H}x{W}"


def path_table() -> str:
    """The operator paths chosen in this process, with every candidate's time for one D + D^T
    (ms; ``!`` marks candidates whose numbers differed from the reference, which cannot be chosen)."""
    names = [str(p) for p in dn.paths.PATHS]
    lines = ["# operator paths chosen (ms for one D + D^T; ! = not bit-identical to the reference, never chosen):",
             f"#   {'shape':<58} {'chosen':<24}" + "".join(f"{n:>24}" for n in names)]
    for c in dn.paths.choices():
        if not c.seconds:  # taken from a measured shape of the same size bucket, checked exact
            lines.append(f"#   {describe_key(c.key):<58} {str(c.path):<24}  (as the measured shape of its size bucket)")
            continue
        cells = "".join(f"{c.seconds[n] * 1e3:>23.2f}{' ' if c.exact[n] else '!'}" for n in names)
        lines.append(f"#   {describe_key(c.key):<58} {str(c.path):<24}{cells}")
    return "\n".join(lines)


def grey_crops(names=(), folder: str | None = None, side: int = 256) -> dict[str, np.ndarray]:
    """Grey centre crops (at most ``side x side``) of scikit-image's sample photos ``names`` and of
    the image files in ``folder``, by name, in [0, 1]."""
    out = {}
    for name in names:
        im = util.img_as_float64(getattr(data, name)())
        out[name] = color.rgb2gray(im[..., :3]) if im.ndim == 3 else im
    if folder:
        for p in dn.images.list_images(folder):
            out[p.name] = dn.images.load_image(p, "gray")[0]
    for name, im in out.items():
        H, W = im.shape
        h, w = min(side, H), min(side, W)
        t, l = (H - h) // 2, (W - w) // 2
        out[name] = np.ascontiguousarray(im[t:t + h, l:l + w])
    return out
