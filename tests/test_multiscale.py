"""Layer 1's filters at several scales (deconvnet.multiscale), used by restoration.

Oracles: the 2x upsampling built by zero insertion and scipy's convolve2d; the synthesis of every
scale by conftest.ref_synthesize (scipy) and that upsampling; dense matrices built column by
column; scikit-learn's Lasso for the joint l1 problem.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import dense_matrix, lasso_reference, ref_synthesize, to_np
from scipy.signal import convolve2d

from deconvnet.multiscale import UPSAMPLE_KERNEL, MultiScaleOperator, upsample, upsample_adjoint
from deconvnet.ops import ConvOperator


def np_upsample(v: np.ndarray, size) -> np.ndarray:
    """Zero insertion at even positions, then the 2-D bilinear kernel, cropped (module docstring:
    (U v)[2i + a - 1] += v[i] u[a])."""
    h, w = v.shape
    up = np.zeros((2 * h - 1, 2 * w - 1))
    up[::2, ::2] = v
    k = np.outer(UPSAMPLE_KERNEL, UPSAMPLE_KERNEL)
    full = convolve2d(up, k, mode="full")  # index 2i + a
    return full[1:1 + size[0], 1:1 + size[1]]


@pytest.mark.parametrize("size", [(10, 12), (9, 11)])
def test_upsample_is_zero_insertion_and_the_bilinear_kernel_and_has_its_adjoint(size):
    h, w = (size[0] + 1) // 2, (size[1] + 1) // 2
    v = np.random.default_rng(0).standard_normal((h, w))
    got = upsample(torch.as_tensor(v)[None, None], size)[0, 0].numpy()
    np.testing.assert_allclose(got, np_upsample(v, size), atol=1e-12)
    U = dense_matrix(lambda V: upsample(torch.as_tensor(V), size).numpy(), (1, h, w))
    Ut = dense_matrix(lambda R: upsample_adjoint(torch.as_tensor(R), (h, w)).numpy(), (1, *size))
    np.testing.assert_allclose(Ut, U.T, atol=1e-12)


@pytest.fixture
def small():
    rng = np.random.default_rng(3)
    f = rng.standard_normal((3, 1, 3, 3))
    f /= np.sqrt((f ** 2).sum(axis=(1, 2, 3), keepdims=True))
    return ConvOperator(torch.as_tensor(f)), f


def test_forward_is_every_scale_synthesised_by_scipy_and_upsampled(small):
    op, f = small
    ms = MultiScaleOperator(op, 3)
    H, W = 13, 10
    z = torch.as_tensor(np.random.default_rng(4).standard_normal(ms.map_shape((1, 1, H, W))))
    sizes = [(13, 10), (7, 5), (4, 3)]
    ref = np.zeros((H, W))
    for j, (h, w) in enumerate(sizes):
        zj = to_np(z)[:, 3 * j:3 * j + 3, :h + 2, :w + 2] * to_np(ms.w[j])[None, :, None, None]
        x = ref_synthesize(zj, f)[0, 0]
        for i in range(j, 0, -1):
            x = np_upsample(x, sizes[i - 1])
        ref += x
    np.testing.assert_allclose(ms.forward(z)[0, 0].numpy(), ref, atol=1e-10)


def test_every_atom_has_unit_norm_and_the_adjoint_is_the_transpose(small):
    op, _ = small
    ms = MultiScaleOperator(op, 2, sqrt_w=torch.as_tensor(np.random.default_rng(5).random((1, 1, 12, 12))))
    unweighted = MultiScaleOperator(op, 2)
    for j in range(2):
        for k in range(3):
            z = torch.zeros(unweighted.map_shape((1, 1, 40, 40)), dtype=torch.float64)
            unweighted.scale_maps(z, j)[0, k, 10, 10] = 1.0  # an atom away from the borders
            assert float(unweighted.forward(z).norm()) == pytest.approx(1.0, rel=1e-12)
    shape = ms.map_shape((1, 1, 12, 12))
    A = dense_matrix(lambda Z: ms.forward(torch.as_tensor(Z)).numpy(), shape[1:])
    At = dense_matrix(lambda R: ms.adjoint(torch.as_tensor(R)).numpy(), (1, 12, 12))
    np.testing.assert_allclose(At, A.T, atol=1e-12)
    unused = np.ones(shape[1:], dtype=bool)
    unused[:3] = False
    unused[3:, :6 + 2, :6 + 2] = False
    assert (A[:, unused.ravel()] == 0).all()  # the padding of the coarse maps is never read


def test_the_joint_problem_solved_by_fista_agrees_with_a_lasso(small):
    """restoration's FISTA on the two-scale operator against sklearn's Lasso on its dense matrix
    (used coordinates only); the unused ones stay exactly 0."""
    from deconvnet.restoration import RestoreSettings, _fista

    op, _ = small
    ms = MultiScaleOperator(op, 2)
    y = torch.as_tensor(np.random.default_rng(6).standard_normal((1, 1, 8, 8)))
    lam = 4.0
    z = _fista(ms, y, lam, 1.0, RestoreSettings(max_iter=20000, tol=1e-12))
    shape = ms.map_shape(y.shape)
    used = np.zeros(shape[1:], dtype=bool)
    used[:3] = True
    used[3:, :4 + 2, :4 + 2] = True
    A = dense_matrix(lambda Z: ms.forward(torch.as_tensor(Z)).numpy(), shape[1:])[:, used.ravel()]
    ref, ref_obj = lasso_reference(A, to_np(y).ravel(), lam)
    zv = to_np(z).ravel()
    assert (zv[~used.ravel()] == 0).all()
    obj = lam / 2 * float(((A @ zv[used.ravel()] - to_np(y).ravel()) ** 2).sum()) + np.abs(zv).sum()
    assert obj == pytest.approx(ref_obj, rel=1e-6)
    np.testing.assert_allclose(zv[used.ravel()], ref, atol=1e-4)


def test_one_scale_is_layer_1s_operator(small):
    op, _ = small
    z = torch.as_tensor(np.random.default_rng(7).standard_normal((1, 3, 9, 9)))
    ms = MultiScaleOperator(op, 1)
    assert torch.equal(ms.forward(z), op.forward(z))
    r = torch.as_tensor(np.random.default_rng(8).standard_normal((1, 1, 7, 7)))
    torch.testing.assert_close(ms.adjoint(r), op.adjoint(r), rtol=0, atol=0)


@pytest.mark.parametrize("scales", [0, 1.5, True])
def test_bad_scales_are_refused(small, scales):
    with pytest.raises(ValueError, match="scales="):
        MultiScaleOperator(small[0], scales)
