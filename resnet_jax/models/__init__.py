"""The model zoo: the paper's ResNets, their plain twins and the pre-activation variants
(resnet.py), the convolution with a matmul kernel gradient (conv.py), oneDNN's CPU convolutions
(onednn.py builds and loads them, onednn_conv.py calls them), shapes-only statistics (stats.py,
table.py) and weights in and out of torchvision, timm and the CIFAR reference (interop.py)."""

from resnet_jax.models.resnet import (  # noqa: F401  (the zoo's interface)
    CIFAR_DEPTHS,
    CONV_KERNEL_GRADS,
    IMAGENET_STAGES,
    SHORTCUTS,
    BasicBlock,
    BottleneckBlock,
    ResNet,
    block_squared_norms,
    create_model,
    model_depth,
    model_names,
    model_spec,
    reference_padding,
)
