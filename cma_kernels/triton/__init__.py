"""Fused Triton kernels behind the Sinkhorn divergence and the distribution-gap loss.

Exposes the same three primitives as :mod:`cma_kernels.reference` (the solver loop in
:mod:`cma_kernels.sinkhorn` is written once against them):

* ``sqdist(x, y, x_shift=None, y_shift=None)`` — tiled ``tl.dot`` pairwise squared distances;
* ``centroid(x, y, a, b)`` — both weighted means and the squared centroid gap, one launch;
* ``make_cost(x, y, shift=None, strategy="auto")`` — :class:`TritonCost`, whose soft-min and
  barycenter reductions stream over tiles (online log-sum-exp) and never build the N×M cost.

All arithmetic is fp32 (inputs of any float dtype are cast on load); offsets are int64. With
``TRITON_INTERPRET=1`` the kernels run on CPU tensors (slowly), which is how the tests check them.
"""

from .cost import TritonCost, make_cost
from .ops import centroid, sqdist

__all__ = ["TritonCost", "centroid", "make_cost", "sqdist"]
