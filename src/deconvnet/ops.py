r"""The synthesis operator of a deconvolutional layer, its adjoint and its filter gradient.

Zeiler et al. 2010, Sec. 2, eq. (1)/(3): layer ``l`` reconstructs each input map ``y_c`` from
its feature maps ``z_k`` through filters ``f_kc`` and a fixed 0/1 connectivity ``g``:

.. math::  \hat y_c = (D z)_c = \sum_k g_{kc}\, (z_k * f_{kc})

where ``*`` is a *true* 2-D convolution (MATLAB's ``conv2``). Two boundaries are offered:

``"valid"`` (the paper, the toolbox)
    ``z_k`` is ``(H+s-1) x (W+s-1)`` and ``z_k * f_kc`` is the 'valid' part, ``H x W``
    (``scipy.signal.convolve2d(z_k, f_kc, mode="valid")``).
``"circular"``
    ``z_k`` is ``H x W`` and the convolution is periodic, i.e. the product of the 2-D DFTs
    of ``z_k`` and of ``f_kc`` zero-padded to ``H x W`` (as in SPORCO's ConvBPDN).

Relation to PyTorch (the "deconvolution" question of the seed note). With filters stored in
the ``conv_transpose2d`` weight layout ``(K, C, s, s)``::

    D z    == F.conv_transpose2d(z, f, padding=s-1)   # (B,K,H+s-1,W+s-1) -> (B,C,H,W)
    D^T r  == F.conv2d(r, f, padding=s-1)             # (B,C,H,W) -> (B,K,H+s-1,W+s-1)

So the paper's synthesis, seen from the maps, *is* a transposed convolution (the full
convolution cropped by ``s-1`` on each side), and the adjoint used by every inference method
is an ordinary correlation with zero padding ``s-1``. Neither inverts the other:
``D^T D`` is not the identity, and the maps are found by optimisation, not by applying
an inverse. (For speed this module computes ``D`` as a depthwise convolution followed by a sum
over ``k``, which gives the same numbers.)

Sparse connectivity: when ``g`` has few ones (the paper's 'singles and all doubles' and
'random doubles'), the operators work on the list of connections ``(k_e, c_e)`` and cost
``O(E)`` convolutions for ``E = sum(g)`` instead of ``O(K C)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_boundary, check_filters, check_same, check_tensor, image_size, map_size
from .paths import Path, forced_path, measure, parse_path

__all__ = ["ConvOperator", "MapOperator", "synthesize", "synthesize_adjoint", "filter_gradient", "as_connectivity"]

#: below this fraction of ones in ``g`` the edge-list path is used.
SPARSE_FRACTION = 0.5


def as_connectivity(g, K: int, C: int, device=None) -> torch.Tensor | None:
    """Return ``g`` as a boolean ``(K, C)`` tensor, or ``None`` for full connectivity.

    Accepts ``None``, the string ``"full"``, or any ``(K, C)`` array-like of zeros and ones.
    """
    if g is None or (isinstance(g, str) and g == "full"):
        return None
    if isinstance(g, str):
        raise ValueError(f"connectivity {g!r} is not a (K, C) 0/1 matrix; strings allowed here: 'full'")
    g = torch.as_tensor(g, device=device)
    if g.shape != (K, C):
        raise ValueError(f"connectivity g must have shape (K, C) = ({K}, {C}), got {tuple(g.shape)}")
    if not bool(((g == 0) | (g == 1)).all()):
        raise ValueError("connectivity g must contain only 0 and 1")
    g = g.to(torch.bool)
    if not bool(g.any(dim=1).all()):
        raise ValueError("connectivity g leaves a feature map unconnected (a row of zeros)")
    if bool(g.all()):
        return None
    return g


class ConvOperator:
    r"""The linear map :math:`D: z \mapsto \hat y` for fixed filters, with its adjoint.

    Build it once per set of filters; the solvers call :meth:`forward` and :meth:`adjoint`
    every iteration, so all reshaping of the filters is done here.

    Args:
        f: filters ``(K, C, s, s)``.
        g: connectivity, ``None`` (full) or ``(K, C)`` 0/1.
        boundary: ``"valid"`` or ``"circular"``.
        path: how to run the convolutions (a :class:`~deconvnet.paths.Path` or
            ``"LAYOUT/PADDING"``); ``None`` = as forced for the process, else measured per
            input shape (:mod:`deconvnet.paths`). Every path gives the same numbers.

    Shape:
        - forward: ``(B, K, H+s-1, W+s-1) -> (B, C, H, W)`` (valid) or ``(B,K,H,W) -> (B,C,H,W)``.
        - adjoint: the reverse.
    """

    def __init__(self, f: torch.Tensor, g=None, boundary: str = "valid", path: Path | str | None = None):
        K, C, s = check_filters(f)
        self.boundary = check_boundary(boundary)
        self.K, self.C, self.s = K, C, s
        self.dtype, self.device = f.dtype, f.device
        self.g = as_connectivity(g, K, C, device=f.device)
        mask = torch.ones(K, C, dtype=torch.bool, device=f.device) if self.g is None else self.g
        self.f = f * mask[:, :, None, None].to(f.dtype)
        self.n_connections = int(mask.sum())
        self.sparse = self.g is not None and self.n_connections <= SPARSE_FRACTION * K * C
        flipped = self.f.flip(-1, -2)  # true convolution = correlation with the flipped filter
        if self.sparse:
            k_e, c_e = mask.nonzero(as_tuple=True)  # sorted by k, then c
            self.k_e, self.c_e = k_e, c_e
            E = self.n_connections
            self._w_synth = flipped[k_e, c_e].reshape(E, 1, s, s).contiguous()
            self._w_adj = self.f[k_e, c_e].reshape(E, 1, s, s).contiguous()
        else:
            # depthwise with channel multiplier C: output channel k*C + c holds z_k * f_kc
            self._w_synth = flipped.reshape(K * C, 1, s, s).contiguous()
            self._w_adj = self.f.contiguous()
        # Single-channel inputs: both operators run as depthwise convolutions on maps stored
        # channels-last, which oneDNN runs several times faster on CPU than the dense
        # K -> 1 convolution (see benchmarks/bench_inference.py). Solvers keep their iterates
        # in ``self.memory_format``; it is fixed by the kind of operator, never by timing, because
        # the solvers' reductions sum in memory order (a timed choice would change results).
        self.memory_format = torch.channels_last if (not self.sparse and C == 1) else torch.contiguous_format
        #: the path whose numbers every other path must reproduce (this project's original one)
        self.reference_path = Path("channels_last" if self.memory_format is torch.channels_last else "contiguous")
        self.path = parse_path(path) if isinstance(path, str) else path
        self._paths: dict[tuple, Path] = {}  # input shape -> path taken
        self._buffers: dict[tuple, torch.Tensor] = {}  # zero-bordered inputs of the explicit padding

    # ------------------------------------------------------------------ shapes
    def map_shape(self, y_shape) -> tuple[int, int, int, int]:
        B, _, H, W = y_shape
        return (B, self.K, *map_size(H, W, self.s, self.boundary))

    def check_maps(self, z: torch.Tensor) -> torch.Tensor:
        check_tensor("z", z, 4, "(B, K, H', W')")
        check_same("z", z, self.f)
        if z.shape[1] != self.K:
            raise ValueError(f"z has {z.shape[1]} maps but the filters have K={self.K}: z is {tuple(z.shape)}")
        H, W = image_size(z.shape[2], z.shape[3], self.s, self.boundary)
        if H < 1 or W < 1 or (self.boundary == "circular" and (self.s > H or self.s > W)):
            raise ValueError(f"maps of size {tuple(z.shape[2:])} are too small for {self.s}x{self.s} filters "
                             f"with boundary={self.boundary!r}")
        return z

    def check_images(self, y: torch.Tensor, name: str = "y") -> torch.Tensor:
        check_tensor(name, y, 4, "(B, C, H, W)")
        check_same(name, y, self.f)
        if y.shape[1] != self.C:
            raise ValueError(f"{name} has {y.shape[1]} channels but the filters expect C={self.C}: "
                             f"{name} is {tuple(y.shape)}")
        if self.boundary == "circular" and (self.s > y.shape[2] or self.s > y.shape[3]):
            raise ValueError(f"{name} of size {tuple(y.shape[2:])} is smaller than the {self.s}x{self.s} filters")
        return y

    def check_pair(self, y: torch.Tensor, z: torch.Tensor) -> None:
        """Check inputs ``y`` and maps ``z`` separately and against each other."""
        self.check_images(y)
        self.check_maps(z)
        if tuple(z.shape) != self.map_shape(y.shape):
            raise ValueError(f"maps of shape {tuple(z.shape)} do not fit inputs of shape {tuple(y.shape)}: "
                             f"expected {self.map_shape(y.shape)} for {self.s}x{self.s} filters, "
                             f"boundary={self.boundary!r}")

    # -------------------------------------------------------------- operators
    def path_for(self, y_shape) -> Path:
        """The path for inputs of ``y_shape`` ``(B, C, H, W)``: the one given to the operator,
        else the one forced for the process, else the measured fastest exact one."""
        shape = tuple(y_shape)
        path = self._paths.get(shape)
        if path is None:
            path = self.path or forced_path()
            if path is None:
                key = (self.device.type, str(self.dtype), self.K, self.C, self.s, self.n_connections, self.sparse,
                       self.boundary, *shape)
                path = measure(key, self.reference_path, lambda: self._probe(shape), self.device).path
            self._paths[shape] = path
        return path

    def _probe(self, y_shape):
        """``run(path)``: one ``D`` and one ``D^T`` along ``path`` on fixed random maps and inputs
        of ``y_shape`` (made here, once), to time and compare the paths on."""
        gen = torch.Generator(device="cpu").manual_seed(0)
        z = torch.randn(self.map_shape(y_shape), generator=gen, dtype=self.dtype)
        r = torch.randn(tuple(y_shape), generator=gen, dtype=self.dtype)
        z, r = z.to(self.device).contiguous(memory_format=self.memory_format), r.to(self.device)
        return lambda path: (self.forward(z, path), self.adjoint(r, path))

    def forward(self, z: torch.Tensor, path: Path | None = None) -> torch.Tensor:
        """``D z``: ``(B, K, Hz, Wz) -> (B, C, H, W)`` (``path``: see :meth:`path_for`)."""
        s = self.s
        if self.boundary == "circular":
            # periodic convolution = 'valid' convolution of the map wrapped by s-1 on top/left
            z = F.pad(z, (s - 1, 0, s - 1, 0), mode="circular") if s > 1 else z
        B, K, Hz, Wz = z.shape
        H, W = Hz - s + 1, Wz - s + 1
        mf = (path or self.path_for((B, self.C, H, W))).memory_format
        if self.sparse:
            out = torch.zeros(B, self.C, H, W, dtype=z.dtype, device=z.device)
            for b in self._chunks(B):  # (B, E, Hz, Wz) -> (B, E, H, W) -> (B, C, H, W)
                zk = z[b].index_select(1, self.k_e).contiguous(memory_format=mf)
                out[b].index_add_(1, self.c_e, F.conv2d(zk, self._w_synth, groups=self.n_connections))
            return out
        pieces = F.conv2d(z.contiguous(memory_format=mf), self._w_synth, groups=K)  # (B, K*C, H, W)
        if self.C == 1:
            return pieces.sum(1, keepdim=True)
        return pieces.reshape(B, K, self.C, H, W).sum(1)

    def adjoint(self, r: torch.Tensor, path: Path | None = None) -> torch.Tensor:
        """``D^T r``: ``(B, C, H, W) -> (B, K, Hz, Wz)``; full correlation with each filter
        (``path``: see :meth:`path_for`)."""
        s, o = self.s, self.s - 1
        B, C, H, W = r.shape
        path = path or self.path_for(r.shape)
        mf = path.memory_format
        if path.padding == "explicit" and o:
            key = (B, C, H, W, path.layout)
            buf = self._buffers.get(key)
            if buf is None:
                buf = torch.empty(B, C, H + 2 * o, W + 2 * o, dtype=r.dtype, device=r.device, memory_format=mf).zero_()
                self._buffers[key] = buf
            buf[:, :, o:o + H, o:o + W].copy_(r)  # the border stays zero
            r, pad = buf, 0
        else:
            pad = o
        if self.sparse:
            out = torch.zeros(B, self.K, H + o, W + o, dtype=r.dtype, device=r.device)
            for b in self._chunks(B):  # (B, C, H, W) -> (B, E, H, W) -> (B, E, Hz, Wz) -> (B, K, Hz, Wz)
                rc = r[b].index_select(1, self.c_e).contiguous(memory_format=mf)
                out[b].index_add_(1, self.k_e, F.conv2d(rc, self._w_adj, padding=pad, groups=self.n_connections))
        elif C == 1 and self.memory_format is torch.channels_last:  # depthwise on K copies of r
            rk = r.expand(B, self.K, *r.shape[2:]).contiguous(memory_format=mf)
            out = F.conv2d(rk, self._w_adj, padding=pad, groups=self.K).contiguous(memory_format=self.memory_format)
        else:
            out = F.conv2d(r.contiguous(memory_format=mf), self._w_adj, padding=pad)  # (B, K, H+s-1, W+s-1)
            out = out.contiguous(memory_format=self.memory_format)
        if self.boundary == "circular" and s > 1:
            out = _fold_wrap(out, s - 1)
        return out

    def normal(self, z: torch.Tensor) -> torch.Tensor:
        """``D^T D z``."""
        return self.adjoint(self.forward(z))

    def norm_sq(self, map_shape, n_iter: int = 50, seed: int = 0) -> float:
        r"""Estimate :math:`\|D\|_2^2` (the Lipschitz constant of ``z -> D^T(Dz - y)``) by power
        iteration on ``D^T D`` for maps of ``map_shape = (1, K, Hz, Wz)``; returns the Rayleigh
        quotient of the last iterate (a lower bound that converges to the true value)."""
        gen = torch.Generator(device="cpu").manual_seed(seed)
        v = torch.randn(map_shape, generator=gen, dtype=torch.float64).to(self.device, self.dtype)
        v = v / v.norm()
        lam_max = 0.0
        for _ in range(n_iter):
            w = self.normal(v)
            lam_max = float((v * w).sum())
            v = w / w.norm().clamp_min(torch.finfo(self.dtype).tiny)
        return lam_max

    def periodic_norm_sq(self, H: int, W: int) -> float:
        r""":math:`\|D\|_2^2` of the periodic synthesis on ``H x W`` images, exactly: ``D`` is
        block-diagonal in the 2-D DFT with one ``C x K`` block :math:`A_\omega` per frequency
        (the filters zero-padded at the origin), so the norm is
        :math:`\max_\omega \lambda_{\max}(A_\omega A_\omega^H)`; for ``C = 1`` that is
        :math:`\max_\omega \sum_k |\hat f_k(\omega)|^2`."""
        Fh = torch.fft.rfft2(self.f.to(torch.float64), s=(H, W))  # (K, C, H, W//2+1), masked filters
        if self.C == 1:
            return float((Fh.real ** 2 + Fh.imag ** 2).sum(0).max())
        A = Fh.permute(2, 3, 1, 0)  # (H, Wf, C, K)
        gram = A @ A.conj().transpose(-1, -2) if self.C <= self.K else A.conj().transpose(-1, -2) @ A
        return float(torch.linalg.eigvalsh(gram).max())

    def filter_gradient(self, z: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        r"""Gradient of :math:`\langle D_z f, r\rangle` in ``f``: the ``(K, C, s, s)`` tensor
        ``G[k, c] = sum_b z_bk (*) r_bc`` (valid correlation, flipped to match the convolution),
        zero where ``g`` is zero. With ``r = D_z f - y`` and a factor ``lam`` it is the gradient
        of the data term used in filter learning (Zeiler et al. 2010, Sec. 3.2)."""
        s = self.s
        if self.boundary == "circular":
            z = F.pad(z, (s - 1, 0, s - 1, 0), mode="circular") if s > 1 else z
        B = z.shape[0]
        if self.sparse:
            E = self.n_connections
            G_e = 0
            for b in self._chunks(B):
                zk = z[b].index_select(1, self.k_e).transpose(0, 1).reshape(1, -1, *z.shape[2:])  # (1, E*b, ...)
                rc = r[b].index_select(1, self.c_e).transpose(0, 1)  # (E, b, H, W)
                G_e = G_e + F.conv2d(zk, rc, groups=E).reshape(E, s, s)
            G_e = G_e.flip(-1, -2)
            G = torch.zeros(self.K, self.C, s, s, dtype=z.dtype, device=z.device)
            G[self.k_e, self.c_e] = G_e
            return G
        G = F.conv2d(z.transpose(0, 1), r.transpose(0, 1)).flip(-1, -2)  # (K, C, s, s)
        if self.g is not None:
            G = G * self.g[:, :, None, None].to(G.dtype)
        return G

    def _chunks(self, B: int) -> list[slice]:
        """Sparse paths run one sample at a time on the CPU: their ``(B, E, H, W)``
        intermediates are ``E/K`` times the maps, and above glibc's 32 MB mmap threshold every
        allocation is fresh, page-faulting memory (batch 5 of the paper's layer 3 measured 7x
        the time of batch 1, not 5x). On a GPU the whole batch goes at once."""
        if B == 1 or self.device.type != "cpu":
            return [slice(0, B)]
        return [slice(b, b + 1) for b in range(B)]

    def with_filters(self, f: torch.Tensor) -> "ConvOperator":
        """A new operator with the same connectivity, boundary and path, and other filters."""
        return ConvOperator(f, self.g, self.boundary, self.path)


#: below this fraction of non-zero map entries :class:`MapOperator` works on the non-zeros.
SPARSE_MAPS_FRACTION = 0.02


class MapOperator:
    r"""The synthesis seen as a linear map of the *filters* for fixed maps ``z``:
    :math:`A_z: f \mapsto D_z f = \sum_k g_{kc}\, z_k * f_{kc}`, and its adjoint
    :math:`A_z^T: r \mapsto G` with :math:`G_{kc}(a, b) = \sum_{b', i, j} z_{b'k}(i, j)\,
    r_{b'c}(i + a - o, j + b - o)` (``o = s - 1`` for ``"valid"``, indices taken modulo the
    image size and ``o = 0`` for ``"circular"``). Filter learning (Sec. 3.2) only needs these two.

    Inferred maps are exactly sparse (the paper's layers 2-3 have a few non-zeros per
    ten thousand entries), so when at most :data:`SPARSE_MAPS_FRACTION` of ``z`` is non-zero
    both maps are computed from the list of non-zeros: every non-zero ``z_k(i, j) = v`` adds
    ``v f_kc`` to the ``s x s`` window of ``y_c`` it touches (a scatter-add), and the
    gradient gathers the same windows of ``r``. The cost is ``O(nnz * s^2 * degree)`` instead
    of ``O(E H W s^2)``. Otherwise the convolutions of :class:`ConvOperator` are used, except
    for the circular boundary with full connectivity: there both maps are products in the 2-D
    DFT, with the transform of ``z`` taken once (``z`` is fixed for the whole filter update),
    :math:`\hat y_{bc} = \sum_k \hat z_{bk} \hat f_{kc}` and
    :math:`\hat G_{kc} = \sum_b \overline{\hat z_{bk}}\, \hat r_{bc}` cropped to the
    ``s x s`` lags. The convolution path computes ``G`` as a convolution with an image-sized
    kernel, which oneDNN runs at a small fraction of its speed; the DFT path's cost grows with
    the ``K C`` filter planes instead of the ``E`` connections, so with sparse connectivity it
    loses. Measured by the last table of ``benchmarks/bench_limit.py`` (AMD EPYC, AVX-512, 2
    threads; the README's run): 6.4x, 2.2x and 8.8x faster on three fully connected shapes,
    11x slower for 45 maps on 9 through singles and pairs. The rule is fixed, not timed: the
    two paths differ in rounding (about 1e-6 relative in float32), and a timed choice would
    make results depend on the machine's load.

    Args:
        z: maps ``(B, K, Hz, Wz)``; op: a :class:`ConvOperator` giving connectivity, boundary
            and filter size (its filter values are not used).

    Shape:
        - apply: ``(K, C, s, s) -> (B, C, H, W)``; adjoint: ``(B, C, H, W) -> (K, C, s, s)``.
    """

    def __init__(self, z: torch.Tensor, op: ConvOperator, sparse: bool | None = None):
        op.check_maps(z)
        self.z, self.op = z, op
        B, K, Hz, Wz = z.shape
        s = op.s
        self.B, self.K, self.C, self.s = B, K, op.C, s
        self.H, self.W = image_size(Hz, Wz, s, op.boundary)
        nz = z.nonzero(as_tuple=True) if sparse is not False else None
        if sparse is None:
            sparse = nz[0].numel() <= SPARSE_MAPS_FRACTION * z.numel()
        self.sparse = bool(sparse)
        self.Zh = None
        if not self.sparse:
            if op.boundary == "circular" and op.n_connections == K * op.C:  # full connectivity
                self.Zh = torch.fft.rfft2(z)  # (B, K, H, W//2+1)
            return
        mask = torch.ones(K, op.C, dtype=torch.bool, device=z.device) if op.g is None else op.g
        k_e, c_e = mask.nonzero(as_tuple=True)  # edges sorted by k, then c
        degree = mask.sum(1)
        first = torch.cumsum(degree, 0) - degree  # index of each map's first edge
        bn, kn, i_n, jn = nz
        reps = degree[kn]  # one (non-zero, edge) pair per connection of its map
        src = torch.repeat_interleave(torch.arange(kn.numel(), device=z.device), reps)
        within = torch.arange(src.numel(), device=z.device) - torch.repeat_interleave(torch.cumsum(reps, 0) - reps, reps)
        self.edge = first[kn[src]] + within  # (N,) edge of every pair
        self.values = z[bn, kn, i_n, jn][src]  # (N,)
        self.k_e, self.c_e, self.E = k_e, c_e, int(k_e.numel())
        c = c_e[self.edge]
        a = torch.arange(s, device=z.device)
        rows = i_n[src][:, None] + a  # (N, s): full-convolution rows i + a
        cols = jn[src][:, None] + a
        if op.boundary == "valid":  # a buffer of the full convolution, (B, C, Hz+s-1, Wz+s-1)
            self.Hf, self.Wf = Hz + s - 1, Wz + s - 1
        else:  # rows wrap modulo H
            self.Hf, self.Wf = self.H, self.W
            rows, cols = rows % self.H, cols % self.W
        plane = (bn[src] * self.C + c) * self.Hf  # (N,)
        self.index = (((plane[:, None] + rows)[:, :, None]) * self.Wf + cols[:, None, :]).reshape(-1)  # (N*s*s,)

    def full(self, r: torch.Tensor) -> torch.Tensor:
        """``r`` ``(B, C, H, W)`` placed in the full-convolution buffer ``(B, C, Hf, Wf)`` that
        the indices of the non-zero path address (zero-bordered for ``"valid"``; ``r`` itself
        for ``"circular"``)."""
        if self.op.boundary == "circular":
            return r.contiguous()
        o = self.s - 1
        return F.pad(r, (o, o, o, o))

    def apply(self, f: torch.Tensor) -> torch.Tensor:
        """``D_z f``: ``(K, C, s, s) -> (B, C, H, W)``."""
        if self.Zh is not None:
            Fh = torch.fft.rfft2(f, s=(self.H, self.W))  # filters zero-padded at the origin
            return torch.fft.irfft2(torch.einsum("bkxy,kcxy->bcxy", self.Zh, Fh), s=(self.H, self.W))
        if not self.sparse:
            return self.op.with_filters(f).forward(self.z)
        s = self.s
        fe = f[self.k_e, self.c_e].reshape(self.E, s * s)  # (E, s*s)
        vals = (self.values[:, None] * fe[self.edge]).reshape(-1)
        full = torch.zeros(self.B * self.C * self.Hf * self.Wf, dtype=f.dtype, device=f.device)
        full.index_add_(0, self.index, vals)
        full = full.view(self.B, self.C, self.Hf, self.Wf)
        if self.op.boundary == "circular":
            return full
        o = s - 1
        return full[:, :, o:o + self.H, o:o + self.W]

    def adjoint(self, r: torch.Tensor) -> torch.Tensor:
        """``G(z, r)``: ``(B, C, H, W) -> (K, C, s, s)``, zero where ``g`` is zero."""
        if self.Zh is not None:
            Gh = torch.einsum("bkxy,bcxy->kcxy", self.Zh.conj(), torch.fft.rfft2(r))
            return torch.fft.irfft2(Gh, s=(self.H, self.W))[..., :self.s, :self.s].contiguous()
        if not self.sparse:
            return self.op.filter_gradient(self.z, r)
        s = self.s
        windows = self.full(r).reshape(-1)[self.index].view(-1, s * s)  # (N, s*s)
        G_e = torch.zeros(self.E, s * s, dtype=r.dtype, device=r.device)
        G_e.index_add_(0, self.edge, windows * self.values[:, None])
        G = torch.zeros(self.K, self.C, s, s, dtype=r.dtype, device=r.device)
        G[self.k_e, self.c_e] = G_e.view(self.E, s, s)
        return G


def _fold_wrap(w: torch.Tensor, p: int) -> torch.Tensor:
    """Adjoint of circular padding by ``p`` on top and left: add the first ``p`` rows/columns
    onto the last ``p`` ones of the ``(H, W)`` part."""
    H, W = w.shape[-2] - p, w.shape[-1] - p
    out = w[..., p:, p:].clone()
    out[..., H - p:, :] += w[..., :p, p:]
    out[..., :, W - p:] += w[..., p:, :p]
    out[..., H - p:, W - p:] += w[..., :p, :p]
    return out


def synthesize(z: torch.Tensor, f: torch.Tensor, g=None, boundary: str = "valid") -> torch.Tensor:
    r"""Reconstruct the input maps from feature maps: :math:`y_c = \sum_k g_{kc} (z_k * f_{kc})`.

    Zeiler et al. 2010, eq. (1) (layer 1) and eq. (3) (layer l, with connectivity ``g``).

    Args:
        z: feature maps ``(B, K, H+s-1, W+s-1)`` (``"valid"``) or ``(B, K, H, W)`` (``"circular"``).
        f: filters ``(K, C, s, s)``, same dtype and device as ``z``.
        g: connectivity ``(K, C)`` of 0/1, or ``None`` for full.
        boundary: ``"valid"`` (the paper) or ``"circular"``.

    Returns:
        ``(B, C, H, W)``.
    """
    op = ConvOperator(f, g, boundary)
    return op.forward(op.check_maps(z))


def synthesize_adjoint(r: torch.Tensor, f: torch.Tensor, g=None, boundary: str = "valid") -> torch.Tensor:
    r"""The adjoint of :func:`synthesize` in ``z``: :math:`(D^T r)_k = \sum_c g_{kc}\, r_c \star f_{kc}`
    (full correlation for ``"valid"``, periodic for ``"circular"``).

    ``<synthesize(z), r> == <z, synthesize_adjoint(r)>`` for all ``z, r``.

    Args:
        r: ``(B, C, H, W)``.
        f: filters ``(K, C, s, s)``.

    Returns:
        ``(B, K, H+s-1, W+s-1)`` (valid) or ``(B, K, H, W)`` (circular).
    """
    op = ConvOperator(f, g, boundary)
    return op.adjoint(op.check_images(r, "r"))


def filter_gradient(z: torch.Tensor, r: torch.Tensor, g=None, boundary: str = "valid", s: int | None = None) -> torch.Tensor:
    r"""Gradient in ``f`` of :math:`\langle \sum_k g_{kc} (z_k * f_{kc}), r_c\rangle`, shape ``(K, C, s, s)``.

    Args:
        z: maps ``(B, K, Hz, Wz)``; r: ``(B, C, H, W)``.
        s: filter size; for ``"valid"`` it follows from the shapes (``Hz - H + 1``).
    """
    check_tensor("z", z, 4, "(B, K, H', W')")
    check_tensor("r", r, 4, "(B, C, H, W)")
    boundary = check_boundary(boundary)
    if s is None:
        if boundary == "circular":
            raise ValueError("filter size s is needed with boundary='circular'")
        s = z.shape[2] - r.shape[2] + 1
    K, C = z.shape[1], r.shape[1]
    dummy = torch.zeros(K, C, s, s, dtype=z.dtype, device=z.device)
    return ConvOperator(dummy, g, boundary).filter_gradient(z, r)
