"""Shared, implementation-independent oracles for the deconvnet test suite.

Everything in this file is written with numpy / scipy only, so that the
package under test is always compared against an independent reference
(scipy.signal.convolve2d for "valid", numpy FFTs for "circular", dense
matrices built from those references, scikit-learn's Lasso, ...).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.signal import convolve2d, correlate2d

# The problems in this suite are tiny; thread start-up dominates otherwise.
torch.set_num_threads(1)


# --------------------------------------------------------------------------
# small conversion helpers
# --------------------------------------------------------------------------
def to_np(x) -> np.ndarray:
    """Tensor / array -> float64 numpy array (detached, on cpu)."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def to_t(x, dtype=torch.float64) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x), dtype=dtype)


def full_g(K: int, C: int) -> np.ndarray:
    return np.ones((K, C))


def random_connectivity(K: int, C: int, rng: np.random.Generator,
                        density: float = 0.5) -> np.ndarray:
    """Random 0/1 (K, C) matrix with every row and column connected, and
    (when K*C > 1) at least one zero, so that sparsity really matters."""
    # a zero is only possible with every row and column still connected when K, C >= 2
    need_zero = K >= 2 and C >= 2
    while True:
        g = (rng.random((K, C)) < density).astype(np.float64)
        if need_zero and g.all():
            continue
        if g.any(axis=1).all() and g.any(axis=0).all():
            return g


def unit_norm_filters(K: int, C: int, s: int, rng: np.random.Generator,
                      g: np.ndarray | None = None) -> np.ndarray:
    f = rng.standard_normal((K, C, s, s))
    f /= np.sqrt((f ** 2).sum(axis=(2, 3), keepdims=True))
    if g is not None:
        f = f * g[:, :, None, None]
    return f


def map_shape(H: int, W: int, s: int, boundary: str) -> tuple[int, int]:
    if boundary == "valid":
        return H + s - 1, W + s - 1
    if boundary == "circular":
        return H, W
    raise AssertionError(boundary)


# --------------------------------------------------------------------------
# reference operators (numpy / scipy)
# --------------------------------------------------------------------------
def ref_synthesize(z, f, g=None, boundary="valid") -> np.ndarray:
    """y[b,c] = sum_k g[k,c] conv(z[b,k], f[k,c]) computed with scipy/numpy."""
    z, f = to_np(z), to_np(f)
    B, K = z.shape[:2]
    Kf, C, s, _ = f.shape
    assert K == Kf
    g = full_g(K, C) if g is None else to_np(g)
    if boundary == "valid":
        H, W = z.shape[2] - s + 1, z.shape[3] - s + 1
    else:
        H, W = z.shape[2], z.shape[3]
    y = np.zeros((B, C, H, W))
    for b in range(B):
        for k in range(K):
            if boundary == "circular":
                Z = np.fft.fft2(z[b, k])
            for c in range(C):
                if g[k, c] == 0:
                    continue
                if boundary == "valid":
                    y[b, c] += g[k, c] * convolve2d(z[b, k], f[k, c], mode="valid")
                else:
                    F = np.fft.fft2(f[k, c], s=(H, W))
                    y[b, c] += g[k, c] * np.real(np.fft.ifft2(Z * F))
    return y


def ref_adjoint(r, f, g=None, boundary="valid") -> np.ndarray:
    """Adjoint of ref_synthesize in z (full correlation / conjugate FFT)."""
    r, f = to_np(r), to_np(f)
    B, C, H, W = r.shape
    K, Cf, s, _ = f.shape
    assert C == Cf
    g = full_g(K, C) if g is None else to_np(g)
    Hz, Wz = map_shape(H, W, s, boundary)
    z = np.zeros((B, K, Hz, Wz))
    for b in range(B):
        for c in range(C):
            if boundary == "circular":
                R = np.fft.fft2(r[b, c])
            for k in range(K):
                if g[k, c] == 0:
                    continue
                if boundary == "valid":
                    z[b, k] += g[k, c] * correlate2d(r[b, c], f[k, c], mode="full")
                else:
                    F = np.fft.fft2(f[k, c], s=(H, W))
                    z[b, k] += g[k, c] * np.real(np.fft.ifft2(R * np.conj(F)))
    return z


def ref_objective(y, z, f, lam, p=1.0, g=None, boundary="valid"):
    """(total, data, penalty) in the package's scaling, computed with scipy."""
    y, z = to_np(y), to_np(z)
    res = ref_synthesize(z, f, g, boundary) - y
    data = lam / 2.0 * float((res ** 2).sum())
    penalty = float((np.abs(z) ** p).sum()) if p != 1.0 else float(np.abs(z).sum())
    # |0|^p must be 0 for every p > 0 (numpy agrees: 0.0 ** 0.5 == 0.0)
    return data + penalty, data, penalty


def dense_matrix(apply, in_shape) -> np.ndarray:
    """Matrix of a linear map `apply` (numpy in -> numpy out), built column by
    column from unit vectors. in_shape excludes the batch dimension; all unit
    vectors are pushed through as one batch."""
    n = int(np.prod(in_shape))
    E = np.eye(n).reshape((n,) + tuple(in_shape))
    out = np.asarray(apply(E))
    return out.reshape(n, -1).T  # (n_out, n_in)


def tap_columns(z, K, C, s, boundary, g) -> list[np.ndarray]:
    """The filter problem's matrices ``A_c`` ``(B*H*W, K*s*s)``, one per channel: column
    ``(k, t)`` is the scipy synthesis of the unit filter tap ``t`` of plane ``(k, c)`` with the
    maps ``z`` (zero where ``g`` is zero)."""
    out = []
    for c in range(C):
        cols = []
        for k in range(K):
            for t in range(s * s):
                e = np.zeros((K, C, s, s))
                if g is None or g[k, c]:
                    e[k, c].flat[t] = 1.0
                cols.append(ref_synthesize(z, e, None, boundary)[:, c].ravel())
        out.append(np.stack(cols, 1))
    return out


def filter_matrix(z, f_shape, boundary) -> np.ndarray:
    """The dense matrix of ``f -> synthesis of the maps z with the filters f`` (every channel):
    column ``i`` is the scipy synthesis of the ``i``-th unit filter tap of shape ``f_shape``."""
    n = int(np.prod(f_shape))
    return np.stack([ref_synthesize(z, np.eye(n)[i].reshape(f_shape), None, boundary).ravel()
                     for i in range(n)], 1)


def ref_synthesis_matrix(f, g, Hz, Wz, boundary="valid") -> np.ndarray:
    """Dense matrix A with A @ z.ravel() == ref_synthesize(z).ravel() (B=1)."""
    K = to_np(f).shape[0]
    return dense_matrix(lambda Z: ref_synthesize(Z, f, g, boundary), (K, Hz, Wz))


def lasso_reference(A: np.ndarray, yvec: np.ndarray, lam: float):
    """argmin_w lam/2 ||A w - y||^2 + ||w||_1 via sklearn's Lasso.

    sklearn minimises 1/(2n)||y - Xw||^2 + alpha ||w||_1, which is our
    objective divided by (lam * n) when alpha = 1 / (lam * n).
    Returns (w, objective in our scaling)."""
    from sklearn.linear_model import Lasso

    n = A.shape[0]
    model = Lasso(alpha=1.0 / (lam * n), fit_intercept=False, tol=1e-12,
                  max_iter=100000)
    model.fit(A, yvec)
    w = model.coef_.copy()
    obj = lam / 2.0 * float(((A @ w - yvec) ** 2).sum()) + float(np.abs(w).sum())
    return w, obj


def lasso_objective(A, yvec, w, lam) -> float:
    return lam / 2.0 * float(((A @ w - yvec) ** 2).sum()) + float(np.abs(w).sum())


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def ref_continuation_p1(A: np.ndarray, yvec: np.ndarray, lam: float, beta0: float,
                        beta_inc: float, n_beta: int, n_cg: int) -> np.ndarray:
    """numpy re-implementation of the paper's continuation scheme for p = 1 on a dense A:
    for j < n_beta: beta = beta0 * beta_inc**j; x = shrink(z, beta); then n_cg CG steps on
    (lam A^T A + beta I) z = lam A^T y + beta x, warm-started at z. Returns the sparse
    x = shrink(z, beta) after the last z-step."""
    n = A.shape[1]
    AtA, Aty = A.T @ A, A.T @ yvec
    z = np.zeros(n)

    def soft(v, beta):
        return np.sign(v) * np.maximum(np.abs(v) - 1.0 / beta, 0.0)

    beta = beta0
    for j in range(n_beta):
        beta = beta0 * beta_inc ** j
        x = soft(z, beta)
        M = lam * AtA + beta * np.eye(n)
        r = lam * Aty + beta * x - M @ z
        d = r.copy()
        rs = r @ r
        for _ in range(n_cg):
            if rs <= 1e-300:
                break
            Md = M @ d
            a = rs / (d @ Md)
            z = z + a * d
            r = r - a * Md
            rs_new = r @ r
            d = r + rs_new / rs * d
            rs = rs_new
    return soft(z, beta)


def rewrite_model_consistently(run, edit_doc=None, edit_tensors=None, format_version: str | None = None):
    """Edit a saved model (``run/model.*``) and recompute both cross-hashes as the documented
    format says (sorted keys, no ``weights_sha256`` in the JSON hash), so that only the
    loader's content checks can object. NaN is written as JSON's non-standard ``NaN``.
    ``format_version``: the weights' metadata (default: the JSON's own, as saved)."""
    import hashlib
    import json

    from safetensors.torch import load as st_load
    from safetensors.torch import save as st_save

    doc = json.loads((run / "model.json").read_text())
    tensors = st_load((run / "model.safetensors").read_bytes())
    if edit_doc:
        edit_doc(doc)
    if edit_tensors:
        edit_tensors(tensors)
    doc.pop("weights_sha256", None)
    if format_version is None:
        format_version = str(doc.get("format_version"))
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    blob = st_save(tensors, metadata={"format": "deconvnet-model", "format_version": format_version,
                                      "json_sha256": hashlib.sha256(canon).hexdigest()})
    (run / "model.safetensors").write_bytes(blob)
    doc["weights_sha256"] = hashlib.sha256(blob).hexdigest()
    (run / "model.json").write_text(json.dumps(doc))
