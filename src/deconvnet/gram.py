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
          = \sum_{q} w(q - o + a)\, z_k(q)\, z_{k'}(q + \delta),

(circular: :math:`w((q + a) \bmod (H, W))`): a pair of non-zeros still meets only the taps
``a`` whose lag is its displacement, but each tap at a pixel of its own weight, so the blocks
are no longer Toeplitz anywhere. The pair search is the same; every pair then adds its product
times the weight of the pixel it meets at to each of its ``(s - |dy|)(s - |dx|)`` tap entries
(about 14 for 7x7 filters, in chunks of at most :data:`_EXPAND` entries), where the
unweighted construction adds one lag sum for the pairs away from the edges. For dense maps,
:func:`dense_gram` multiplies one side of the product by ``w``. Weights that differ between
channels give each channel its own matrix (the pair search once per channel, over the maps
it connects to).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["SPARSE_GRAM_FRACTION", "channel_grams", "dense_gram", "map_gram", "map_pairs"]

#: above this fraction of non-zero map entries, :func:`channel_grams` unfolds the maps densely.
SPARSE_GRAM_FRACTION = 0.05

#: non-zeros per chunk of the pair search (bounds its intermediates to some 100 MB).
_CHUNK = 1 << 15
#: (pair, tap) entries per step of the weighted construction (its intermediates: some 300 MB).
_EXPAND = 1 << 22


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


def map_gram(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str = "valid",
             weight: torch.Tensor | None = None) -> torch.Tensor:
    r"""``M`` ``(P, s*s, s*s)`` float64: for every map pair ``(first[i], second[i])`` of
    :func:`map_pairs` (``k <= k'``), :math:`M_i[a, a'] = \sum_{b,p} A[p, (k, a)]\, A[p, (k', a')]`
    summed over the batch of maps ``z`` ``(B, K, Hz, Wz)``, taps ``a`` row-major in the filter
    layout ``(s, s)``; see the module docstring. ``weight``: ``None``, or the per-pixel
    weights ``(B, H, W)`` float64 of the images: :math:`\sum_{b,p} w_b(p) A[p, (k, a)]\, A[p, (k', a')]`."""
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
                        pair_index, lag_sum, gram, weight)
    if weight is not None:  # every pair went tap by tap
        return gram.view(P, s * s, s * s)
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
                    lag_sum, gram, weight=None):
    """Add the pairs whose first non-zero is in this chunk to ``lag_sum`` and ``gram`` (with
    ``weight``: all to ``gram``, tap by tap, :func:`_add_weighted`)."""
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
    if weight is not None:
        _add_weighted(dy, dx, pid, prod, (_at(b, rep_owner), _at(i, rep_owner), _at(j, rep_owner)), dims, boundary,
                      weight, gram)
        return
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


def _add_weighted(dy, dx, pid, prod, owner, dims, boundary, weight, gram):
    """Add every pair's product, times the weight of the pixel where it meets each tap, to the
    tap entries of ``gram`` (the weighted construction; see the module docstring). ``owner``:
    batch index and position ``(b, i, j)`` of each pair's first non-zero; ``weight`` ``(B, H,
    W)``."""
    K, ny, nx, Hz, Wz, H, W, s = dims
    o = s - 1
    _, qi, qj = owner
    pieces = []  # (pair index, lag y, lag x, first tap y, first tap x, tap counts, pixel of tap 0)
    if boundary == "valid":
        sel = torch.nonzero((dy.abs() <= o) & (dx.abs() <= o), as_tuple=True)[0]
        ly, lx, ri, rj = _at(dy, sel), _at(dx, sel), _at(qi, sel), _at(qj, sel)
        # taps with the partner's tap a - d in [0, s) and the pixel q - o + a in the image
        lo_y = torch.maximum(ly.clamp(min=0), o - ri)
        hi_y = torch.minimum((o + ly).clamp(max=o), o + H - 1 - ri)
        lo_x = torch.maximum(lx.clamp(min=0), o - rj)
        hi_x = torch.minimum((o + lx).clamp(max=o), o + W - 1 - rj)
        pieces.append((sel, ly, lx, lo_y, hi_y, lo_x, hi_x, ri - o, rj - o))
    else:  # a displacement modulo the size is one or two lags in [-o, o] (see _add_circular)
        d0y, d0x = dy % Hz, dx % Wz
        for cand_y in (d0y, d0y - Hz):
            for cand_x in (d0x, d0x - Wz):
                sel = torch.nonzero((cand_y.abs() <= o) & (cand_x.abs() <= o), as_tuple=True)[0]
                ly, lx = _at(cand_y, sel), _at(cand_x, sel)
                pieces.append((sel, ly, lx, ly.clamp(min=0), (o + ly).clamp(max=o), lx.clamp(min=0),
                               (o + lx).clamp(max=o), _at(qi, sel), _at(qj, sel)))
    wflat, n2 = weight.reshape(-1), s * s
    step = max(1, _EXPAND // n2)
    for sel, ly, lx, lo_y, hi_y, lo_x, hi_x, py0, px0 in pieces:
        wy, wx = (hi_y - lo_y + 1).clamp(min=0), (hi_x - lo_x + 1).clamp(min=0)
        # per pair: the entry of its first tap in gram (row a, column a - lag, a = (lo_y, lo_x))
        entry0 = (_at(pid, sel) * n2 + lo_y * s + lo_x) * n2 + (lo_y - ly) * s + (lo_x - lx)
        qb = _at(owner[0], sel)
        for start in range(0, sel.numel(), step):
            part = slice(start, start + step)
            m = wy[part] * wx[part]
            total = int(m.sum())
            if total == 0:
                continue
            ends = torch.cumsum(m, 0)
            t = torch.arange(total, device=m.device) - torch.repeat_interleave(ends - m, m)
            wxe = torch.repeat_interleave(wx[part], m)
            dq = torch.div(t, wxe, rounding_mode="floor")
            dr = t - dq * wxe  # tap (lo_y + dq, lo_x + dr)
            py = torch.repeat_interleave(py0[part] + lo_y[part], m) + dq
            px = torch.repeat_interleave(px0[part] + lo_x[part], m) + dr
            if boundary == "circular":
                py, px = py % H, px % W
            pix = (torch.repeat_interleave(qb[part], m) * H + py) * W + px
            val = torch.repeat_interleave(_at(prod, sel[part]), m) * _at(wflat, pix)
            # row and column both move by (dq, dr): the entry by dq * s * (s*s + 1) + dr * (s*s + 1)
            idx = torch.repeat_interleave(entry0[part], m) + (dq * s + dr) * (n2 + 1)
            gram.index_add_(0, idx, val)


def dense_gram(z: torch.Tensor, mask: torch.Tensor, s: int, boundary: str = "valid",
               weight: torch.Tensor | None = None) -> torch.Tensor:
    """The same ``M`` as :func:`map_gram` from the maps unfolded densely (``A`` of every map,
    one matrix product per map pair's block row): for dense maps, where the pair search would
    visit most of the ``(2s-1)^2`` neighbourhood of every entry. ``weight``: as
    :func:`map_gram` (each product weighted by its pixel's weight)."""
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
    w = None if weight is None else weight.reshape(B, 1, -1).double()  # (B, 1, HW): pixel p of column p
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
    (``(B or 1, C or 1, H, W)``): :math:`A_c^T W_c A_c` (see the module docstring)."""
    dense = float((z != 0).sum()) > SPARSE_GRAM_FRACTION * z.numel()
    if weight is not None:
        B, C, (H, W) = z.shape[0], mask.shape[1], weight.shape[-2:]
        w = weight.double().expand(B, weight.shape[1], H, W)
        if w.shape[1] > 1 and C > 1:  # a matrix of its own per channel
            return [channel_grams(z, mask[:, c:c + 1], s, boundary, w[:, c:c + 1])[0] for c in range(C)]
        w = w[:, 0].contiguous()  # (B, H, W), the same for every channel
    else:
        w = None
    M = (dense_gram if dense else map_gram)(z, mask, s, boundary, weight=w)
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
