r"""deconvnet: Deconvolutional Networks (Zeiler, Krishnan, Taylor, Fergus, CVPR 2010) in PyTorch.

A deconvolutional network is a stack of convolutional sparse-coding layers trained greedily,
bottom-up, with no encoder. Layer ``l`` explains its inputs ``y`` as

.. math:: C_l = \frac{\lambda}{2}\sum_c \Big\|\sum_k g_{kc}\,(z_k * f_{kc}) - y_c\Big\|^2 + \sum_k |z_k|^p

Glossary (the paper's symbols, used as names throughout the code):

=========  =====================================================================
``y``      inputs ``(B, C, H, W)``: image channels (layer 1) or the maps below
``z``      feature maps ``(B, K, H+s-1, W+s-1)`` ('valid') or ``(B, K, H, W)``
``f``      filters ``(K, C, s, s)`` (the ``conv_transpose2d`` weight layout)
``g``      fixed 0/1 connectivity ``(K, C)``; ``None`` = full
``lam``    weight of the data term (SPORCO's ``lmbda`` is ``1/lam``)
``p``      sparsity exponent, ``0 < p <= 1``
``x``      auxiliary variable of the continuation scheme
``beta``   coupling weight of ``x`` and ``z``, raised by ``beta_inc``
``D``      the synthesis operator ``z -> sum_k g_kc z_k * f_kc``
=========  =====================================================================

See ``docs/paper_map.md`` for which function implements which part of the paper.
"""

__version__ = "0.1.0"

from .config import ConfigError, LayerConfig, NetConfig, apply_overrides, load_config, preset
from .connectivity import connectivity
from .filters import init_filters, normalize_planes, update_filters
from .solvers import IterationRecord, Objective, SparseCode, objective, sparse_code
from .solvers.prox import shrink, shrink_threshold
from .checkpoint import CheckpointError
from .train import DivergenceError, EpochRecord
from .layer import DeconvLayer
from .model_io import ModelFileError
from .network import DeconvNet, snr_db
from .ops import ConvOperator, MapOperator, filter_gradient, synthesize, synthesize_adjoint
from .images import ImageReadError, ImageSet, read_folder, read_images
from .sparsity import Calibration, lam_for_density, lam_zero
from . import distributed, masks, paths, restoration, runtime
from .restoration import RestoreSettings

__all__ = [
    "ConfigError",
    "DeconvNet",
    "LayerConfig",
    "ModelFileError",
    "NetConfig",
    "apply_overrides",
    "connectivity",
    "preset",
    "snr_db",
    "ConvOperator",
    "DeconvLayer",
    "DivergenceError",
    "ImageReadError",
    "ImageSet",
    "read_folder",
    "read_images",
    "load_config",
    "MapOperator",
    "CheckpointError",
    "EpochRecord",
    "IterationRecord",
    "Objective",
    "SparseCode",
    "filter_gradient",
    "init_filters",
    "normalize_planes",
    "objective",
    "shrink",
    "shrink_threshold",
    "sparse_code",
    "synthesize",
    "synthesize_adjoint",
    "update_filters",
    "Calibration",
    "lam_for_density",
    "lam_zero",
    "distributed",
    "masks",
    "paths",
    "restoration",
    "RestoreSettings",
    "runtime",
]
