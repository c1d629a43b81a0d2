"""Datasets behind one contract: ObjectSet (object crops + part landmarks), load, iter_objects,
negatives, iter_negatives, names, describe. Sources: pascal_part, cub200, ilsvrc_animal_part,
folder and the embedded synthetic set (`egjax.data.synthetic`)."""

from egjax.data.files import CorruptFileError, SkippedFilesWarning
from egjax.data.loading import (ObjectStream, StreamImages, describe, instability_parts,
                                iter_negatives, iter_objects, load, names, negatives)
from egjax.data.objects import ObjectSet, concatenate, mirror, select_parts
from egjax.data.source import Description

__all__ = ["CorruptFileError", "Description", "ObjectSet", "ObjectStream", "SkippedFilesWarning",
           "StreamImages", "concatenate", "describe", "instability_parts", "iter_negatives",
           "iter_objects", "load", "mirror", "names", "negatives", "select_parts"]
