"""Datasets, scale operations and the scale-shift benchmark protocols.

The main entry point is :func:`build_protocol`; the readers (:func:`load_idx_dataset`, :func:`load_cifar`,
:func:`load_digits_dataset`, :class:`RobustImageFolder`) and the scale ops (:mod:`msresnet.data.scaling`) are usable on
their own.
"""

from __future__ import annotations

from msresnet.data.datasets import ImageTensorDataset, load_cifar, load_digits_dataset, stratified_split
from msresnet.data.folder import BadImageWarning, RobustImageFolder, load_folder_tensors, scan_image_folder
from msresnet.data.idx import IDX_DATASETS, find_idx_files, load_idx_dataset, read_idx
from msresnet.data.images import BadImageError, load_image
from msresnet.data.protocols import (
    PROTOCOL_VERSION,
    Protocol,
    build_protocol,
    list_protocols,
    protocol_defaults,
    protocol_help,
)

__all__ = [
    "IDX_DATASETS",
    "PROTOCOL_VERSION",
    "BadImageError",
    "BadImageWarning",
    "ImageTensorDataset",
    "Protocol",
    "RobustImageFolder",
    "build_protocol",
    "find_idx_files",
    "list_protocols",
    "load_cifar",
    "load_digits_dataset",
    "load_folder_tensors",
    "load_idx_dataset",
    "load_image",
    "protocol_defaults",
    "protocol_help",
    "read_idx",
    "scan_image_folder",
    "stratified_split",
]
