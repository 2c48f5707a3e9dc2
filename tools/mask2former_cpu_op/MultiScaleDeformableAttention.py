"""CPU stand-in for Mask2Former's ``MultiScaleDeformableAttention`` op (installed by tools/install_detectron2.sh).

Mask2Former's op is CUDA-only: built with CUDA it still refuses CPU tensors ("Not implemented on the CPU"),
and ``MSDeformAttn.forward`` catches that error and runs the pure-PyTorch ``ms_deform_attn_core_pytorch``.
But ``ms_deform_attn_func.py`` imports the op unconditionally, so without CUDA (where the op cannot be
built) Mask2Former does not import at all. This module satisfies that import and refuses every call, as
the op does for CPU tensors, so Mask2Former's own fallback computes the attention, on any device.
On a CUDA machine tools/install_detectron2.sh builds the real op instead, which replaces this module.
"""

# Lets tools/install_detectron2.sh tell this stand-in from the compiled op.
REFINE_HOOKS_CPU_STAND_IN = True

_MESSAGE = ("MultiScaleDeformableAttention is the CPU stand-in installed by refine-hooks' "
            "tools/install_detectron2.sh (no CUDA build of Mask2Former's op here); Mask2Former's "
            "MSDeformAttn falls back to ms_deform_attn_core_pytorch")


def ms_deform_attn_forward(*args, **kwargs):
    raise NotImplementedError(_MESSAGE)


def ms_deform_attn_backward(*args, **kwargs):
    raise NotImplementedError(_MESSAGE)
