"""Object recognition with deconvolutional-network features: the paper's Caltech-101 protocol
(Zeiler et al. 2010, Sec. 4.2; paper-notes 5.2).

Images -> descriptors (:mod:`.features`: DN maps of layer 1, 2 or both, or the dense-SIFT
baseline; :mod:`.descriptors` the construction) -> codebook and spatial pyramid
(:mod:`.pyramid`) -> histogram-intersection kernel -> ``SVC(kernel="precomputed")``, over
random splits of a class-per-folder dataset (:mod:`.dataset`, :mod:`.protocol`).
"""

from .dataset import ClassFolders, Split, make_splits, network_images, read_class_folders
from .descriptors import Descriptors, map_descriptors, normalize_sift, orientation_maps, sift_descriptors
from .features import FEATURES, DNDescriptors, MapCache, SiftDescriptors, network_digest
from .protocol import SplitResult, classifier, evaluate_splits, mean_class_accuracy, summarize
from .pyramid import IntersectionKernel, PyramidEncoder, intersection_kernel, level_weights, pyramid_histogram

__all__ = ["ClassFolders", "Split", "make_splits", "network_images", "read_class_folders", "Descriptors",
           "map_descriptors", "normalize_sift", "orientation_maps", "sift_descriptors", "FEATURES", "DNDescriptors",
           "MapCache", "SiftDescriptors", "network_digest", "SplitResult", "classifier", "evaluate_splits",
           "mean_class_accuracy", "summarize", "IntersectionKernel", "PyramidEncoder", "intersection_kernel",
           "level_weights", "pyramid_histogram"]
