"""VGG-16 in Flax with named taps, ported ImageNet weights and orbax checkpoints."""

from egjax.models.checkpoint import load_checkpoint, save_checkpoint
from egjax.models.download import PUBLISHED, fetch
from egjax.models.meta import ModelMeta, preprocess
from egjax.models.vgg import VGG16, Layer, check_params, param_shapes, trunk_layers
from egjax.models.weights import load_vgg16, read_weights

__all__ = [
    "PUBLISHED", "Layer", "ModelMeta", "VGG16", "check_params", "fetch", "load_checkpoint",
    "load_vgg16", "param_shapes", "preprocess", "read_weights", "save_checkpoint",
    "trunk_layers",
]
