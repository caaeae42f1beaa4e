"""Post-processing of model outputs.

* :func:`dense_crf`: DeepLab's fully-connected CRF (Krähenbühl and Koltun 2011) refining
  ``(K, H, W)`` class probabilities with the image: mean-field inference, a separable Gaussian
  smoothness kernel and a permutohedral-lattice appearance kernel; no ``O(N^2)`` step.
* :func:`dense_crf_exact`: the same CRF with dense ``N x N`` kernels, a reference for small images.
* :func:`scale_intensity`: percentile scaling of 16-bit/float images to 0..255, the units the CRF's
  intensity sigma is meant for.
* :class:`PermutohedralLattice`: the high-dimensional Gaussian filter underneath (Adams et al. 2010).

Example:
    >>> import torch
    >>> from seglab.postprocess import dense_crf, scale_intensity
    >>> frame = torch.randint(0, 65536, (1, 64, 64)).float()       # raw 16-bit microscopy
    >>> probs = torch.randn(2, 64, 64).softmax(0)                   # (K, H, W) model output
    >>> dense_crf(scale_intensity(frame), probs).shape
    torch.Size([2, 64, 64])
"""

from seglab.postprocess.crf import dense_crf, dense_crf_exact, scale_intensity
from seglab.postprocess.permutohedral import PermutohedralLattice

__all__ = ["PermutohedralLattice", "dense_crf", "dense_crf_exact", "scale_intensity"]
