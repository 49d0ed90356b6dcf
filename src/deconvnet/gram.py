r"""Gram matrices of the filter problem from the non-zeros of sparse maps, exactly.

With the maps ``z`` fixed, the synthesis of channel ``c`` is linear in the planes ``f_kc`` of
its connected maps: :math:`y_c = A_c x_c` with, for boundary ``"valid"`` (``o = s - 1``),

.. math:: A_c[p, (k, a)] = z_k(p + o - a), \qquad p \in [0, H) \times [0, W),\ a \in [0, s)^2,

and for ``"circular"`` :math:`A_c[p, (k, a)] = z_k((p - a) \bmod (H, W))`. The Gram matrix
:math:`A_c^T A_c` depends on the channel only through which maps it takes: its blocks are the
blocks of one matrix of the maps,

.. math:: M_{kk'}[a, a'] = \sum_p z_k(p + o - a)\, z_{k'}(p + o - a')
          = \sum_{q \in Q(a)} z_k(q)\, z_{k'}(q + \delta), \qquad \delta = a - a',

a sum over the pairs of non-zeros ``q`` of ``z_k`` and ``q + delta`` of ``z_k'`` at most
``s - 1`` apart in each direction, where ``Q(a)`` is the window of map positions that tap ``a``
sends into the image. :func:`map_gram` finds those pairs in a grid of ``s x s`` cells (a
non-zero's partners lie in its cell or the 8 around it). A pair whose first entry lies at
least ``s - 1`` from every edge of the map is inside ``Q(a)`` for every tap: it adds its
product to the lag sum :math:`T_{kk'}(\delta)`, and :math:`M_{kk'}[a, a - \delta] = T_{kk'}(\delta)`
for all valid taps (a Toeplitz block). Only the pairs near the edges add to the taps one by
one. For the circular boundary every pair is of the first kind (lags taken modulo the size).

Work and memory grow with the number of such pairs (about ``nnz * degree * density * (2s-1)^2``)
and with the ``(number of map pairs) * s^4`` entries of the result, not with the image size:
for layer 3 of the paper (150 maps on 45, 1.5% non-zero) the pairs of one image number about
a million. Dense maps are better served by :func:`dense_gram` (one matrix product of the
unfolded maps), which :func:`channel_grams` uses above :data:`SPARSE_GRAM_FRACTION`.

**Per-pixel weights** (issue 14, :mod:`deconvnet.masks`). With weights :math:`w_c(p)` in the
data term the Gram matrix is :math:`A_c^T W_c A_c`,

.. math:: M^{w}_{kk'}[a, a'] = \sum_p w(p)\, z_k(p + o - a)\, z_{k'}(p + o - a')
          = \sum_{q} w(q - o + a)\, z_k(q)\, z_{k'}(q + \delta)

(circular: :math:`w((q + a) \bmod (H, W))`): a pair of non-zeros meets the same taps as
before, but each tap at a pixel of its own weight, so no block is Toeplitz any more and the
lag sums above do not apply. :func:`weighted_grams` forms the sparse matrix ``A`` itself (one
entry per non-zero and tap, ``nnz * s^2``) and multiplies :math:`A_c^T (W_c A_c)` with
``scipy.sparse``, which does the same products as summing every pair of non-zeros tap by tap
with its pixel's weight. Measured (one image, one thread, unweighted :func:`channel_grams` /
weighted, best of 3, 2026-12-06, ``OMP_NUM_THREADS=1`` on a shared 2-core machine): the
paper's layer 1, 9 maps of 156 x 156 at 2.8% non-zero, 30-38 / 20-25 ms (RGB, one product
for the 3 channels: 38 / 21-27 ms); layer 2, 45 maps on 9 at 1.45%, 132-233 / 126-131 ms;
layer 3, 150 on 45, 632-642 / 473-501 ms; circular layer 1 on 128 x 128, 28 / 24 ms. A torch
version of the pair search that adds every pair tap by tap (about 14 entries per pair for
7x7 filters) was exact too but took 2.3-5x the unweighted time, so the weighted matrices are
built on the CPU (they are small, and :class:`~deconvnet.filters.NormalEquations` solves on
the CPU anyway). Dense maps go through :func:`dense_gram`, which weighs one side of its product.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SPARSE_GRAM_FRACTION", "channel_grams", "dense_gram", "map_gram", "map_pairs", "weighted_grams"]

#: above this fraction of non-zero map entries, :func:`channel_grams` unfolds the maps densely.
SPARSE_GRAM_FRACTION = 0.05

#: non-zeros per chunk of the pair search (bounds its intermediates to some 100 MB).
_CHUNK = 1 << 15


def map_pairs(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pairs ``k <= k'`` of maps that share an input channel under connectivity ``mask``
    ``(K, C)`` bool: ``(first, second, index)`` where ``index`` ``(K, K)`` holds each pair's
    position in ``first``/``second`` (``-1`` for pairs that share no channel), symmetric."""
    m = mask.to(torch.float64)
    shares = (m @ m.T) > 0
    first, second = torch.triu(shares).nonzero(as_tuple=True)
    index = torch.full(shares.shape, -1, dtype=torch.long, device=mask.device)
    ids = torch.arange(first.numel(), device=mask.device)
    index[first, second] = ids
    index[second, first] = ids
    return first, second, index


def _cells(n: int, s: int) -> int:
    """Cells of width at least ``s`` along a side of ``n`` entries (the last one takes the rest)."""
    return max(1, n // s)


def map_gram(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str = "valid") -> torch.Tensor:
    r"""``M`` ``(P, s*s, s*s)`` float64: for every map pair ``(first[i], second[i])`` of
    :func:`map_pairs` (``k <= k'``), :math:`M_i[a, a'] = \sum_{b,p} A[p, (k, a)]\, A[p, (k', a')]`
    summed over the batch of maps ``z`` ``(B, K, Hz, Wz)``, taps ``a`` row-major in the filter
    layout ``(s, s)``; see the module docstring."""
    B, K, Hz, Wz = z.shape
    o = s - 1
    device = z.device
    first, second, pair_index = map_pairs(mask)
    P = first.numel()
    L = 2 * s - 1  # lags per axis, -o..o
    lag_sum = torch.zeros(P * L * L, dtype=torch.float64, device=device)
    gram = torch.zeros(P * s ** 4, dtype=torch.float64, device=device)
    nz = z.nonzero(as_tuple=False)
    if nz.shape[0] == 0:
        return gram.view(P, s * s, s * s)
    vals = z[nz[:, 0], nz[:, 1], nz[:, 2], nz[:, 3]].double()
    b, k, i, j = nz.unbind(1)
    H, W = (Hz - o, Wz - o) if boundary == "valid" else (Hz, Wz)
    ny, nx = _cells(Hz, s), _cells(Wz, s)
    cy, cx = torch.clamp(i // s, max=ny - 1), torch.clamp(j // s, max=nx - 1)
    key = ((b * K + k) * ny + cy) * nx + cx
    order = torch.argsort(key, stable=True)
    b, k, i, j, vals, key = b[order], k[order], i[order], j[order], vals[order], key[order]
    cy, cx = cy[order], cx[order]
    counts = torch.bincount(key, minlength=B * K * ny * nx)
    starts = torch.cumsum(counts, 0) - counts
    # partners k' >= k of every map, as a padded table (K, D)
    partner = torch.zeros(K, K, dtype=torch.bool, device=device)
    partner[first, second] = True
    degree = partner.sum(1)
    D = int(degree.max())
    ptab = torch.sort(torch.where(partner, torch.arange(K, device=device), K), dim=1).values[:, :D]
    offsets = _neighbour_offsets(ny, boundary), _neighbour_offsets(nx, boundary)
    dcell = torch.cartesian_prod(offsets[0], offsets[1])  # (Nc, 2)
    for start in range(0, vals.numel(), _CHUNK):
        part = slice(start, start + _CHUNK)
        _pairs_of_chunk(b[part], k[part], i[part], j[part], vals[part], cy[part], cx[part], ptab, dcell,
                        (b, k, i, j, vals), counts, starts, (K, ny, nx, Hz, Wz, H, W, s), boundary,
                        pair_index, lag_sum, gram)
    # the Toeplitz part: M[a, a'] += T(a - a') for every tap pair
    a = torch.arange(s, device=device)
    ay, ax = a.repeat_interleave(s), a.repeat(s)  # tap (ay, ax) of index ay*s + ax
    lag = ((ay[:, None] - ay[None, :] + o) * L + (ax[:, None] - ax[None, :] + o)).reshape(-1)  # (s^4,)
    gram = gram.view(P, s ** 4) + lag_sum.view(P, L * L)[:, lag]
    return gram.view(P, s * s, s * s)


def _neighbour_offsets(n: int, boundary: str) -> torch.Tensor:
    """Cell offsets to visit along a side of ``n`` cells: -1, 0, 1; for a periodic side of
    fewer than 3 cells, each cell once."""
    if boundary == "circular" and n < 3:
        return torch.arange(n)
    return torch.tensor([-1, 0, 1])


def _pairs_of_chunk(b, k, i, j, v, cy, cx, ptab, dcell, every, counts, starts, dims, boundary, pair_index,
                    lag_sum, gram):
    """Add the pairs whose first non-zero is in this chunk to ``lag_sum`` and ``gram``."""
    K, ny, nx, Hz, Wz, H, W, s = dims
    o, L = s - 1, 2 * s - 1
    device = v.device
    _, ek, ei, ej, ev = every
    D, Nc = ptab.shape[1], dcell.shape[0]
    # (non-zero, partner map, neighbour cell) triples and the cell's range of non-zeros
    kp = ptab[k]  # (n, D); K marks padding
    ncy = cy[:, None] + dcell[:, 0].to(device)  # (n, Nc)
    ncx = cx[:, None] + dcell[:, 1].to(device)
    if boundary == "circular":
        ncy, ncx = ncy % ny, ncx % nx
        inside = torch.ones_like(ncy, dtype=torch.bool)
    else:
        inside = (ncy >= 0) & (ncy < ny) & (ncx >= 0) & (ncx < nx)
    live = ((kp < K)[:, :, None] & inside[:, None, :]).reshape(-1)
    trip = torch.nonzero(live, as_tuple=True)[0]  # live (non-zero, partner, cell) triples only
    owner = trip // (D * Nc)
    rest = trip % (D * Nc)
    kk, cell = _at(kp.reshape(-1), owner * D + rest // Nc), rest % Nc
    flat = owner * Nc + cell
    cell_key = ((_at(b, owner) * K + kk) * ny + _at(ncy.reshape(-1), flat)) * nx + _at(ncx.reshape(-1), flat)
    cnt_all = _at(counts, cell_key)
    keep = torch.nonzero(cnt_all, as_tuple=True)[0]
    if keep.numel() == 0:
        return
    cnt_s, owner = _at(cnt_all, keep), _at(owner, keep)
    first_of = _at(starts, _at(cell_key, keep))
    rep_owner = torch.repeat_interleave(owner, cnt_s)
    ends = torch.cumsum(cnt_s, 0)
    within = torch.arange(int(ends[-1]), device=device) - torch.repeat_interleave(ends - cnt_s, cnt_s)
    partner_idx = torch.repeat_interleave(first_of, cnt_s) + within  # global index of the second non-zero
    dy = _at(ei, partner_idx) - _at(i, rep_owner)
    dx = _at(ej, partner_idx) - _at(j, rep_owner)
    pid = _at(pair_index.reshape(-1), _at(k, rep_owner) * K + _at(ek, partner_idx))
    prod = _at(v, rep_owner) * _at(ev, partner_idx)
    if boundary == "circular":
        _add_circular(dy, dx, pid, prod, Hz, Wz, o, L, lag_sum)
        return
    near = torch.nonzero((dy.abs() <= o) & (dx.abs() <= o), as_tuple=True)[0]
    dy, dx, pid, prod, rep_owner = (_at(t, near) for t in (dy, dx, pid, prod, rep_owner))
    qi, qj = _at(i, rep_owner), _at(j, rep_owner)
    # taps of the first entry, per axis: a in [max(0, d, o - q), min(o, o + d, o + H - 1 - q)]
    lo_y = torch.maximum(torch.clamp(dy, min=0), o - qi)
    hi_y = torch.minimum(torch.clamp(o + dy, max=o), o + H - 1 - qi)
    lo_x = torch.maximum(torch.clamp(dx, min=0), o - qj)
    hi_x = torch.minimum(torch.clamp(o + dx, max=o), o + W - 1 - qj)
    full = (lo_y == dy.clamp(min=0)) & (hi_y == (o + dy).clamp(max=o)) & \
        (lo_x == dx.clamp(min=0)) & (hi_x == (o + dx).clamp(max=o))
    inner = torch.nonzero(full, as_tuple=True)[0]
    lag_sum.index_add_(0, (_at(pid, inner) * L + _at(dy, inner) + o) * L + _at(dx, inner) + o, _at(prod, inner))
    wy, wx = (hi_y - lo_y + 1).clamp(min=0), (hi_x - lo_x + 1).clamp(min=0)
    edge = torch.nonzero(~full & (wy * wx > 0), as_tuple=True)[0]
    if edge.numel() == 0:
        return
    dy, dx, pid, prod, lo_y, lo_x, wx, wy = (_at(t, edge) for t in (dy, dx, pid, prod, lo_y, lo_x, wx, wy))
    m = wy * wx
    e = torch.repeat_interleave(torch.arange(m.numel(), device=device), m)
    ends = torch.cumsum(m, 0)
    t = torch.arange(int(ends[-1]), device=device) - torch.repeat_interleave(ends - m, m)
    wxe = _at(wx, e)
    ay = _at(lo_y, e) + t // wxe
    ax = _at(lo_x, e) + t % wxe
    row = ay * s + ax
    col = (ay - _at(dy, e)) * s + (ax - _at(dx, e))
    gram.index_add_(0, (_at(pid, e) * s * s + row) * s * s + col, _at(prod, e))


def _at(t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``t[idx]`` for 1-D ``t`` and index tensor ``idx`` (``index_select``: several times faster
    on the CPU than advanced indexing)."""
    return t.index_select(0, idx)


def _add_circular(dy, dx, pid, prod, Hz, Wz, o, L, lag_sum):
    """Periodic lags: a displacement ``d`` modulo ``n`` is the lag ``d0`` or ``d0 - n`` (``d0 in
    [0, n)``) where that lies in ``[-o, o]``; on sides shorter than ``2s - 1`` both can."""
    d0y, d0x = dy % Hz, dx % Wz
    for ly in (d0y, d0y - Hz):
        for lx in (d0x, d0x - Wz):
            ok = (ly.abs() <= o) & (lx.abs() <= o)
            lag_sum.index_add_(0, (pid[ok] * L + ly[ok] + o) * L + lx[ok] + o, prod[ok])


def dense_gram(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str = "valid",
               weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""The same ``M`` as :func:`map_gram` from the maps unfolded densely (``A`` of every map,
    one matrix product per map pair's block row): for dense maps, where the pair search would
    visit most of the ``(2s-1)^2`` neighbourhood of every entry. ``weight``: ``None``, or
    per-pixel weights ``(B, H, W)`` of the images: :math:`\sum_{b,p} w_b(p) A[p, (k, a)]\,
    A[p, (k', a')]` (one side of the product weighted)."""
    B, K = z.shape[:2]
    o = s - 1
    first, second, _ = map_pairs(mask)
    zz = z.double()
    if boundary == "circular":
        zz = F.pad(zz, (o, 0, o, 0), mode="circular") if o else zz
    # column (k, a) of A at image position p is z_k(p + o - a): unfold gives z_k(p + a'') for
    # a'' = 0..o row-major, i.e. a = o - a'' (the taps reversed)
    cols = F.unfold(zz.reshape(B * K, 1, *zz.shape[2:]), s)  # (B*K, s*s, HW)
    cols = cols.flip(1).reshape(B, K, s * s, -1)
    out = torch.empty(first.numel(), s * s, s * s, dtype=torch.float64, device=z.device)
    w = None if weight is None else weight.reshape(B, 1, -1).double()  # (B, 1, HW): column p is pixel p
    for kk in torch.unique(first).tolist():
        sel = (first == kk).nonzero(as_tuple=True)[0]
        Ak = cols[:, kk] if w is None else cols[:, kk] * w  # (B, s*s, HW)
        Ap = cols[:, second[sel]]  # (B, n, s*s, HW)
        out[sel] = torch.einsum("bap,bnqp->naq", Ak, Ap)
    return out


def channel_grams(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str = "valid",
                  weight: torch.Tensor | None = None) -> list[torch.Tensor]:
    r"""Per input channel ``c`` the Gram matrix :math:`A_c^T A_c` ``(n_c s^2, n_c s^2)`` float64
    of its ``n_c`` connected maps (in increasing ``k``, map-major, taps row-major), assembled
    from the blocks of :func:`map_gram` (or of :func:`dense_gram` for maps with more than
    :data:`SPARSE_GRAM_FRACTION` non-zeros).

    ``weight``: ``None``, or per-pixel weights broadcastable to the images ``(B, C, H, W)``
    (``(B or 1, C or 1, H, W)``): :math:`A_c^T W_c A_c`, from :func:`weighted_grams` (or
    :func:`dense_gram` for dense maps; see the module docstring)."""
    dense = float((z != 0).sum()) > SPARSE_GRAM_FRACTION * z.numel()
    if weight is not None:
        if not dense:
            return weighted_grams(z, mask, s, boundary, weight)
        B, C, (H, W) = z.shape[0], mask.shape[1], weight.shape[-2:]
        w = weight.double().expand(B, weight.shape[1], H, W)
        if w.shape[1] > 1 and C > 1:  # a matrix of its own per channel
            return [channel_grams(z, mask[:, c:c + 1], s, boundary, w[:, c:c + 1])[0] for c in range(C)]
        M = dense_gram(z, mask, s, boundary, w[:, 0])
    else:
        M = (dense_gram if dense else map_gram)(z, mask, s, boundary)
    Mt = torch.cat([M, M.transpose(1, 2)])  # block (k', k) = block (k, k') transposed
    _, _, index = map_pairs(mask)
    P, n2 = M.shape[0], s * s
    out = []
    for c in range(mask.shape[1]):
        ks = mask[:, c].nonzero(as_tuple=True)[0]
        blocks = index[ks[:, None], ks[None, :]] + P * (ks[:, None] > ks[None, :]).long()  # (n, n)
        n = ks.numel()
        out.append(Mt[blocks.reshape(-1)].view(n, n, n2, n2).permute(0, 2, 1, 3).reshape(n * n2, n * n2))
    return out


def weighted_grams(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str, weight: torch.Tensor) -> list[torch.Tensor]:
    r"""Per input channel ``c``, :math:`A_c^T W_c A_c` ``(n_c s^2, n_c s^2)`` float64 (the layout
    of :func:`channel_grams`) for maps ``z`` ``(B, K, Hz, Wz)``, connectivity ``mask`` ``(K, C)``
    and per-pixel weights ``weight`` broadcastable to ``(B, C, H, W)``.

    ``A`` (all ``B H W`` pixels by all ``K s^2`` taps) is built as a ``scipy.sparse`` matrix
    from the non-zeros of ``z``: entry ``(p, (k, a))`` is :math:`z_k(q)` for the pixel
    :math:`p = q - o + a` (``"valid"``, inside the image) or :math:`(q + a) \bmod (H, W)`
    (``"circular"``); channel ``c`` takes the columns of its maps, and channels with the same
    maps and the same weights share one product. Computed on the CPU; returned on ``z``'s
    device."""
    import numpy as np  # noqa: PLC0415
    import scipy.sparse as sp  # noqa: PLC0415

    B, K = z.shape[:2]
    C, o, n2 = mask.shape[1], s - 1, s * s
    H, W = weight.shape[-2:]
    zc = z.detach().to("cpu", torch.float64)
    b, k, i, j = (t.numpy() for t in zc.nonzero(as_tuple=True))
    v = zc.numpy()[b, k, i, j]
    ay, ax = np.divmod(np.arange(n2), s)  # tap a = (ay, ax), row-major
    if boundary == "valid":
        py, px = i[:, None] - o + ay, j[:, None] - o + ax  # (nnz, s^2): the pixel each tap meets
        ok = (py >= 0) & (py < H) & (px >= 0) & (px < W)
    else:
        py, px = (i[:, None] + ay) % H, (j[:, None] + ax) % W
        ok = np.ones(py.shape, dtype=bool)
    rows = ((b[:, None] * H + py) * W + px)[ok]
    cols = (k[:, None] * n2 + np.arange(n2))[ok]
    A = sp.csc_matrix((np.broadcast_to(v[:, None], ok.shape)[ok], (rows, cols)), shape=(B * H * W, K * n2))
    w = weight.detach().to("cpu", torch.float64).expand(B, weight.shape[1], H, W).numpy()
    table = mask.cpu().numpy().astype(bool)
    done: dict[tuple, torch.Tensor] = {}
    out = []
    for c in range(C):
        ks = np.nonzero(table[:, c])[0]
        cw = c if w.shape[1] > 1 else 0
        key = (tuple(ks.tolist()), cw)
        if key not in done:
            Ac = A[:, (ks[:, None] * n2 + np.arange(n2)).ravel()]  # (B H W, n_c s^2)
            G = (Ac.T @ sp.diags(w[:, cw].reshape(-1)) @ Ac).toarray()
            done[key] = torch.from_numpy(G).to(z.device)
        out.append(done[key])
    return out
