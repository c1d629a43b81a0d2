"""3x3, stride-1, zero-padding-1 convolution by Winograd's minimal filtering F(2x2, 3x3)
(Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016).

Each 2x2 output tile Y comes from the 4x4 input tile d around it and the 3x3 kernel g as

    Y = A^T [ (G g G^T) * (B^T d B) ] A,     (* elementwise, per input/output channel pair)

    B^T = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
    G   = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    A^T = [[1, 1, 1, 0], [0, 1, -1, -1]]

so the sum over input channels becomes 16 matrix products [tiles, C] @ [C, O]: 16 multiply-adds
per tile and channel pair instead of the direct convolution's 36. The transforms only add and
halve; the float32 error stays within about twice a direct convolution's (~1e-7 of the map's
scale).

Used on CPU, where XLA's direct convolution (YNNPACK in jaxlib 0.10) runs VGG-16 at about two
thirds of TensorFlow's oneDNN speed, for convolutions with at least `MIN_FEATURES` outputs:
measured per image on a 2-core AVX-512 CPU, F(2x2, 3x3) is 1.6x faster than the direct
convolution for VGG-16's conv3_x, 1.9x for conv4_x and 1.2x for conv5_x, but slower for
conv1_x and conv2_x (64 and 128 output channels: the matrix products are too thin to pay for
the transforms). Other backends keep `lax.conv_general_dilated` (cuDNN and the TPU pick their
own algorithms).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

NHWC_HWIO = ("NHWC", "HWIO", "NHWC")
MIN_FEATURES = 256
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]])
KRON_G = np.kron(G, G)     # [16, 9]: row 4a + b, column 3i + j holds G[a, i] G[b, j]


def _input_rows(d: list) -> list:
    """B^T applied along one axis to the 4 slices d[0..3] of a tile."""
    return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_rows(m: list) -> list:
    """A^T applied along one axis to the 4 slices m[0..3] of a transformed tile."""
    return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """[3, 3, C, O] (HWIO) -> G g G^T as [16, C, O] (index 4 * row + column).

    One product `kron(G, G) [16, 9] @ kernel [9, C*O]`, which reads the kernel once. A conv
    given no pre-transformed kernel (`vgg.winograd_kernels`) runs this in every call.
    """
    _, _, channels, features = kernel.shape
    product = jnp.dot(jnp.asarray(KRON_G, kernel.dtype), kernel.reshape(9, -1),
                      precision=lax.Precision.HIGHEST)
    return product.reshape(16, channels, features)


def conv3x3(images: jax.Array, kernel: jax.Array, precision=lax.Precision.HIGHEST,
            transformed: jax.Array | None = None) -> jax.Array:
    """[N, H, W, C] * [3, 3, C, O] -> [N, H, W, O]: stride 1, zero padding 1, by F(2x2, 3x3).
    `transformed`: the kernel's `transform_kernel`, where it is already computed."""
    n, height, width, _ = images.shape
    tiles_h, tiles_w = -(-height // 2), -(-width // 2)
    padded = jnp.pad(images, ((0, 0), (1, 1 + 2 * tiles_h - height),
                              (1, 1 + 2 * tiles_w - width), (0, 0)))
    rows = _input_rows([padded[:, k:k + 2 * tiles_h:2] for k in range(4)])
    tiles = jnp.stack([v for row in rows
                       for v in _input_rows([row[:, :, k:k + 2 * tiles_w:2] for k in range(4)])])
    if transformed is None:
        transformed = transform_kernel(kernel)
    products = jnp.einsum("tnhwc,tco->tnhwo", tiles, transformed, precision=precision)
    products = products.reshape(4, 4, *products.shape[1:])
    out_rows = _output_rows([products[0], products[1], products[2], products[3]])
    quads = [jnp.stack(_output_rows([row[0], row[1], row[2], row[3]]), axis=3) for row in out_rows]
    out = jnp.stack(quads, axis=2).reshape(n, 2 * tiles_h, 2 * tiles_w, -1)
    return out[:, :height, :width]


def pays(kernel_shape: tuple) -> bool:
    """Whether a conv with this HWIO kernel shape runs by Winograd (given stride 1, padding 1):
    on CPU, 3x3 kernels with at least MIN_FEATURES outputs."""
    return (jax.default_backend() == "cpu" and tuple(kernel_shape[:2]) == (3, 3)
            and kernel_shape[3] >= MIN_FEATURES)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None,
                         transformed=None, **kwargs):
    """`lax.conv_general_dilated`, computed by `conv3x3` (from the `transformed` kernel where
    given) where that applies and `pays` (NHWC input, HWIO kernel, stride 1, padding 1, no
    dilation, one group); for `nn.Conv`."""
    plain = lax.conv_dimension_numbers(lhs.shape, rhs.shape, NHWC_HWIO)
    applies = (pays(rhs.shape)
               and tuple(window_strides) == (1, 1)
               and not isinstance(padding, str) and [tuple(p) for p in padding] == [(1, 1)] * 2
               and all(d in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
               and feature_group_count == 1 and dimension_numbers == plain and not kwargs)
    if applies:
        return conv3x3(lhs, rhs, lax.Precision.HIGHEST if precision is None else precision,
                       transformed)
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
                                    dimension_numbers, feature_group_count, precision=precision,
                                    **kwargs)
