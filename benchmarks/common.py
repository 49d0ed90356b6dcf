"""Problems shared by the benchmark scripts (no third-party data: scikit-image's samples)."""

from __future__ import annotations

import platform

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage import data

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
    """Add the options every benchmark shares (``--threads``, and ``--device`` / ``--json``
    when asked), parse the command line, apply ``--threads`` and the library's process-wide
    settings (:func:`deconvnet.runtime.configure`); returns the arguments."""
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    if device:
        ap.add_argument("--device", default="cpu", help="cpu or cuda")
    if json:
        ap.add_argument("--json", default=None, metavar="FILE", help="also write the results as JSON")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dn.runtime.configure()  # a benchmark is an entry point: the library's process-wide settings
    return args


def environment(device: str = "cpu") -> dict:
    env = {"deconvnet": dn.__version__, "torch": torch.__version__, "threads": torch.get_num_threads(),
           "device": device, "machine": platform.processor() or platform.machine(), "python": platform.python_version()}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name()
    return env
