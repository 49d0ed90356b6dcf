"""Planted structure (issue 12): images made by a known two-layer model, and the trained network
recovers both layers, up to order, sign and shift.

The model (numpy and scipy only, nothing from the library):

- layer 1: three parts, short horizontal, vertical and diagonal bars (3 pixels in 5 x 5 planes);
- layer 2: the paper's 'singles and pairs' connectivity on the three parts (3 + 3 maps), each
  map a known combination of two bars at a known offset (``COMBOS``): parallel lines for the
  singles, corners and junctions for the pairs. In pixel space map ``j`` is the atom
  ``A_j = sum_c f2_jc * f1_c``;
- images: ``y = sum_j z2_j * A_j`` ('valid'), ``z2`` a few spikes of random sign and size.

The network (the ``calibrated`` preset, sized to the model, density targets at the model's) is
trained on the images; its layer-2 filters are composed with its own layer-1 filters in pixel
space (``scipy.signal.convolve2d``) and each planted atom is matched to the best learned one by
the largest normalised cross-correlation over all shifts. Chance is the same score for the
network's own initial layer-2 filters composed with its learned layer 1: what layer 2 would show
had it learned nothing.

Measured over seeds 0-9 (one seed for the images and the network) at these settings, with a
throwaway script of the same functions: layer 1 found all three bars at >= 0.99 in 8 of 10
seeds (seeds 3 and 6: one bar at 0.79-0.80); the layer-2 mean score was 0.80-1.00, with 3-6 of
the 6 atoms at >= 0.9, where chance had means 0.33-0.42 and no atom above 0.5. The misses are
local minima of the alternating scheme: a map keeps one of its two bars (score about 0.7) and
lets the single maps explain the other. The thresholds below hold for 8 of the 10 seeds (the
layer-1 one fails on seeds 3 and 6); the test runs seed 1. (With one image per batch at
layer 2 the layer-2 mean fell to 0.67-0.96, with 0-4 atoms at >= 0.9: updates from single
images land in more of these minima.)
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.signal import convolve2d, correlate2d

import deconvnet as dn
from deconvnet.config import apply_overrides

S1, S2 = 5, 7  # filter sizes of layers 1 and 2
#: layer-2 combinations: two (part, row, column) placements of layer-1 parts in a layer-2 plane,
#: in the order of 'singles+pairs' on 3 maps (singles 0, 1, 2, then pairs 01, 02, 12)
COMBOS = [((0, 0, 0), (0, 4, 3)), ((1, 0, 0), (1, 3, 4)), ((2, 0, 0), (2, 0, 4)),
          ((0, 0, 0), (1, 1, 4)), ((0, 0, 0), (2, 4, 2)), ((1, 0, 0), (2, 2, 3))]
SIDE, N_IMAGES, PER_IMAGE = 40, 12, 10


def parts() -> list[np.ndarray]:
    """Unit-norm bars of 3 pixels centred in 5 x 5: horizontal, vertical, diagonal."""
    h = np.zeros((S1, S1))
    h[2, 1:4] = 1
    return [b / np.linalg.norm(b) for b in (h, h.T.copy(), np.diag([0, 1, 1, 1, 0.0]))]


def atoms() -> list[np.ndarray]:
    """The pixel-space atom of every planted layer-2 map."""
    f1 = parts()
    out = []
    for combo in COMBOS:
        a = np.zeros((S1 + 4, S1 + 4))
        for c, r, q in combo:
            a[r:r + S1, q:q + S1] += f1[c]
        out.append(a)
    return out


def planted_images(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    A = atoms()
    S = A[0].shape[0]
    out = []
    for _ in range(N_IMAGES):
        z = np.zeros((len(A), SIDE + S - 1, SIDE + S - 1))
        for _ in range(PER_IMAGE):
            j = rng.integers(len(A))
            r, c = rng.integers(0, SIDE + S - 1, size=2)
            z[j, r, c] += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
        out.append(sum(convolve2d(z[j], A[j], mode="valid") for j in range(len(A))))
    return out


def best_match(target: np.ndarray, candidates) -> float:
    """Largest |normalised cross-correlation| of ``target`` with any candidate at any shift."""
    return max(np.abs(correlate2d(p, target, mode="full")).max() / (np.linalg.norm(p) * np.linalg.norm(target))
               for p in candidates)


def compose(f2: np.ndarray, f1: np.ndarray) -> list[np.ndarray]:
    """Pixel-space layer-2 atoms ``sum_c f2_kc * f1_c`` (full convolution)."""
    return [sum(convolve2d(f2[k, c], f1[c, 0], mode="full") for c in range(f1.shape[0])) for k in range(f2.shape[0])]


def test_the_scores_tell_a_planted_atom_from_a_half_and_from_noise():
    """The score itself: 1 for an atom shifted and negated, 1/sqrt(2) for one of its two bars
    alone (they do not overlap), and near chance for random planes."""
    A = atoms()
    moved = -np.roll(np.pad(A[3], 3), (2, -1), axis=(0, 1))
    assert best_match(A[3], [moved]) == pytest.approx(1.0)
    half = np.zeros_like(A[3])
    half[0:S1, 0:S1] = parts()[0]
    assert best_match(A[3], [half]) == pytest.approx(2 ** -0.5)
    rng = np.random.default_rng(0)
    assert best_match(A[3], [rng.standard_normal((11, 11)) for _ in range(6)]) < 0.6


@pytest.fixture(scope="module")
def planted_net():
    # density targets at the model's: layer 1 about 2 spikes per atom on 3 maps of 44 x 44,
    # layer 2 one per atom on 6 maps of 50 x 50 (10 / 15000 = 0.067%)
    cfg = apply_overrides(dn.preset("calibrated", 2), [
        "preprocess=none", "max_side=none", "seed=1", "dtype=float64",
        "layer1.n_maps=3", f"layer1.filter_size={S1}", "layer1.n_epochs=6", "layer1.density=0.003",
        "layer2.n_maps=6", f"layer2.filter_size={S2}", "layer2.connectivity=singles+pairs",
        "layer2.n_epochs=10", "layer2.density=0.0007"])
    return dn.DeconvNet(cfg).fit(planted_images(seed=1))


def test_layer_1_recovers_the_planted_parts(planted_net):
    f1 = planted_net.layers_[0].filters_.double().numpy()
    scores = [best_match(b, [f1[k, 0] for k in range(f1.shape[0])]) for b in parts()]
    assert min(scores) > 0.9, scores


def test_layer_2_recovers_the_planted_combinations_far_better_than_chance(planted_net):
    f1 = planted_net.layers_[0].filters_.double().numpy()
    f2 = planted_net.layers_[1].filters_.double().numpy()
    f2_init = planted_net.layers_[1].spec_.initial_filters().double().numpy()
    learned = [best_match(a, compose(f2, f1)) for a in atoms()]
    chance = [best_match(a, compose(f2_init, f1)) for a in atoms()]
    assert max(chance) < 0.9 and np.mean(chance) < 0.6, chance
    assert np.mean(learned) > np.mean(chance) + 0.3, (learned, chance)
    assert sum(s > 0.9 for s in learned) >= 3, learned  # half of them nearly exactly; chance: none


def test_denoising_from_layer_2_beats_layer_1_which_beats_the_noisy_input(planted_net):
    """The paper's denoising ordering (Zeiler et al. 2010; paper-notes 5.3): on images of the
    planted model with strong Gaussian noise (1.5 times the images' standard deviation, about
    -3.6 dB), the reconstruction from layer 2's maps has a higher SNR than the one from layer 1's,
    which beats the noisy input. As in the paper, every layer infers with its own trained ``lam``,
    layer by layer; the kept entries are then refitted by least squares on their support
    (``debias``: the calibrated densities are low, and the l1 penalty alone shrinks the kept
    entries so much that layer 2's reconstruction loses most of the signal, about 2 dB even
    without noise), and layer 2 infers with 3 times its ``lam``.

    Measured with the same functions on 4 noise seeds: noisy -3.6 to -3.7 dB, layer 1 -0.6 to
    -0.9 dB, layer 2 1.4 to 2.1 dB. At 1.0 times the standard deviation the ordering held too, with
    layer 2 0.2-0.6 dB above layer 1; without the debiasing, layer 2 stays near 2 dB at every noise
    level and the ordering fails."""
    from deconvnet.restoration import RestoreSettings, restore

    clean = planted_images(seed=7)[:4]
    sd = np.std(np.concatenate([c.ravel() for c in clean]))
    rng = np.random.default_rng(0)
    noisy = [c + rng.standard_normal(c.shape) * 1.5 * sd for c in clean]
    settings = RestoreSettings(inference="layerwise", debias=20, upper_lam_scale=3.0, clip=False)
    res = restore(planted_net, noisy, sigma=None, layers=(1, 2), settings=settings)

    def snr(estimates):
        return np.mean([dn.snr_db(c, e) for c, e in zip(clean, estimates)])

    s0, s1, s2 = snr(noisy), snr([r[1][0] for r in res]), snr([r[2][0] for r in res])
    assert s2 > s1 + 1.0 and s1 > s0 + 1.5, (s0, s1, s2)
