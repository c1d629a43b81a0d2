"""What a set of network parameters is: its architecture, origin, shape and input convention.

Two input conventions exist for ImageNet weights:
* "caffe" (the original Oxford VGG-16 release, ported by Keras, what the paper used; and the
  Keras ResNet-50 release): BGR channel order, 0..255 scale, minus the BGR mean
  [103.939, 116.779, 123.68].
* "torch" (torchvision, timm): RGB, x/255, minus mean [0.485, 0.456, 0.406], divided by std
  [0.229, 0.224, 0.225].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)
CONVENTIONS = ("caffe", "torch")


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """Origin (`source`: a published name, a path or "synthetic"), architecture (`arch`, a
    name in `egjax.models.registry`), shape and input convention of params; `classes`, if
    known, names the logits in order. Checkpoints written before `arch` existed are VGG-16s."""

    source: str
    width: float = 1.0
    head: str | None = "fc"
    num_classes: int = 1000
    preprocessing: str = "caffe"
    classes: tuple[str, ...] = ()
    arch: str = "vgg16"

    def __post_init__(self):
        if not (isinstance(self.classes, (list, tuple))
                and all(isinstance(c, str) for c in self.classes)):
            raise ValueError(f"classes must be a sequence of names, got {self.classes!r}")
        object.__setattr__(self, "classes", tuple(self.classes))
        if self.classes and len(self.classes) != self.num_classes:
            raise ValueError(f"classes names {len(self.classes)} classes but num_classes is "
                             f"{self.num_classes}")
        if self.preprocessing not in CONVENTIONS:
            raise ValueError(f"preprocessing must be one of {CONVENTIONS}, "
                             f"got {self.preprocessing!r}")
        self.model()

    def model(self):
        """The module these parameters belong to, built by the registered `arch`
        (ValueError naming the registered architectures for an unknown one)."""
        from egjax.models import registry   # registry -> weight loaders -> meta
        return registry.build(self)

    def to_dict(self) -> dict:
        """The fields as a JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, fields: dict) -> "ModelMeta":
        """Inverse of `to_dict`; ValueError naming unknown or missing fields."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(fields) - names)
        if unknown or "source" not in fields:
            raise ValueError(f"bad model meta: unknown fields {unknown}, fields {sorted(fields)}")
        return cls(**fields)


def preprocess(images_uint8, meta: ModelMeta) -> jax.Array:
    """uint8 RGB images [N, H, W, 3] -> float32 network input in `meta.preprocessing`'s convention.

    Pure jnp: runs inside jit (so batches can travel to the device as uint8).
    """
    shape = getattr(images_uint8, "shape", None)
    dtype = getattr(images_uint8, "dtype", None)
    if shape is None or len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
        raise ValueError(f"preprocess expects uint8 RGB images [N, H, W, 3] in 0..255, "
                         f"got {dtype} {shape}")
    x = jnp.asarray(images_uint8).astype(jnp.float32)
    if meta.preprocessing == "caffe":
        return x[..., ::-1] - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
    mean = jnp.asarray(TORCH_MEAN_RGB, jnp.float32)
    std = jnp.asarray(TORCH_STD_RGB, jnp.float32)
    return (x / 255.0 - mean) / std
