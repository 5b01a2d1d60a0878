"""Pure forward/backward functions on arrays (NumPy or CuPy).

Every op comes as a pair in the style of cs231n: ``y, cache = op_forward(...)``
and ``grads = op_backward(dy, cache)``. Layers in ``nabi.layers`` hold the
parameters and call these. ``dispatch`` chooses, per call, who computes an op's
memory-bound primitives: the array code written beside the op (the reference),
the compiled CPU loops (``cpu_kernels``) or the CUDA kernels (``gpu_kernels``).
``conv`` is the readable convolution; ``conv_fast`` the same with the speed-ups the
layers use (kept buffers, batch chunks, fused ReLU, fused SGD).
"""
from .activation import (leaky_relu_backward, leaky_relu_forward, log_softmax, log_softmax_backward,
                         log_softmax_forward, relu_backward, relu_forward, sigmoid_backward, sigmoid_forward,
                         softmax, softmax_backward, softmax_forward, tanh_backward, tanh_forward)
from .conv import col2im, conv2d_backward, conv2d_forward, im2col, resolve_padding
from .conv_loops import conv2d_reference_backward, conv2d_reference_forward
from .drop_path import check_drop_probability, drop_path_backward, drop_path_forward
from .embedding import (arcface_backward, arcface_forward, batch_hard_pairs, cosface_backward, cosface_forward,
                        cosine_linear_backward, cosine_linear_forward, l2_normalize_backward, l2_normalize_forward,
                        subcenter_max_backward, subcenter_max_forward, triplet_batch_hard_backward,
                        triplet_batch_hard_forward)
from .gem import check_gem_exponent, gem_backward, gem_forward
from .linear import flatten_backward, flatten_forward, linear_backward, linear_forward
from .loss import cross_entropy_backward, cross_entropy_forward, mse_backward, mse_forward
from .norm import (batch_norm_backward, batch_norm_forward, dropout_backward, dropout_forward, lrn_backward,
                   lrn_forward)
from .pool import (adaptive_avg_pool2d_backward, adaptive_avg_pool2d_forward, avg_pool2d_backward,
                   avg_pool2d_forward, max_pool2d_backward, max_pool2d_forward)
from .shape import output_hw, output_size, pair, same_padding
