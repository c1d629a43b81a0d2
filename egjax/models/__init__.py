"""Networks for egjax: the model contract and registry, VGG-16 and ResNet-50 in Flax with named
taps, ported ImageNet weights and orbax checkpoints."""

from egjax.models.checkpoint import load_checkpoint, save_checkpoint
from egjax.models.contract import Layer, Residual, check_params, param_shapes, perturbation_name
from egjax.models.download import PUBLISHED, fetch
from egjax.models.meta import ModelMeta, preprocess
from egjax.models.registry import ARCHITECTURES, load, register
from egjax.models.resnet import ResNet50
from egjax.models.resnet_weights import load_resnet50
from egjax.models.vgg import VGG16, trunk_layers
from egjax.models.weights import load_vgg16, read_weights

__all__ = [
    "ARCHITECTURES", "PUBLISHED", "Layer", "ModelMeta", "Residual", "ResNet50", "VGG16",
    "check_params", "fetch", "load", "load_checkpoint", "load_resnet50", "load_vgg16",
    "param_shapes", "perturbation_name",
    "preprocess", "read_weights", "register", "save_checkpoint", "trunk_layers",
]
