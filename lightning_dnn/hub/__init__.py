"""Save, load, share and reuse networks as Hugging Face Hub model repos (safetensors, never pickle).

* :func:`save_pretrained` writes a folder: ``config.json`` (architecture + constructor arguments + metadata; for
  an unregistered network its class path and, when given, ``init_args``), ``model.safetensors`` and a
  ``README.md`` model card;
* :func:`load_pretrained` reads a local folder, ``hf://org/name[@revision]`` or ``zoo:name``, whole or in part
  (``include="hidden[123]"``), into a new network or an existing one (``into=``), with a :class:`LoadReport`;
  folders written by timm (``save_for_hf``) and by huggingface_hub's ``PyTorchModelHubMixin`` load too;
* :func:`push_to_hub` publishes a folder or a network;
* :func:`load_foreign_arrays` imports arrays from ``.npz``, Keras ``.h5`` and Keras 3 ``.keras``/``.weights.h5``
  files (under the layer names the user gave in Keras), converting TF layouts;
* :class:`PretrainedLayers` is the same loading as a Lightning callback (a fresh fit loads, a resume does not),
  so a LightningCLI config can reuse pretrained layers;
* :func:`register_architecture` adds a network class that config.json can name;
* :func:`load_zoo_index`/:func:`resolve_zoo` read the zoo index that ships inside the package (``zoo:name``).

The ``lightning-dnn zoo`` commands and the zoo's build pipeline live in :mod:`lightning_dnn.cli`, above this package.
"""

from lightning_dnn.hub.architectures import (
    ArchitectureSpec,
    architecture_of,
    available_architectures,
    get_architecture,
    register_architecture,
)
from lightning_dnn.hub.callback import PretrainedLayers
from lightning_dnn.hub.errors import (
    ChecksumMismatchError,
    HubDownloadError,
    StrictLoadError,
    UnsafeWeightsError,
    WeightsFileError,
)
from lightning_dnn.hub.foreign import load_foreign_arrays, read_foreign_arrays
from lightning_dnn.hub.load import load_pretrained, resolve_source
from lightning_dnn.hub.partial import LoadReport, load_state_dict_partial
from lightning_dnn.hub.push import push_to_hub
from lightning_dnn.hub.save import save_pretrained
from lightning_dnn.hub.zoo import ZooEntry, load_zoo_index, resolve_zoo

__all__ = [
    "ArchitectureSpec",
    "ChecksumMismatchError",
    "HubDownloadError",
    "LoadReport",
    "PretrainedLayers",
    "StrictLoadError",
    "UnsafeWeightsError",
    "WeightsFileError",
    "ZooEntry",
    "architecture_of",
    "available_architectures",
    "get_architecture",
    "load_foreign_arrays",
    "load_pretrained",
    "load_state_dict_partial",
    "load_zoo_index",
    "push_to_hub",
    "read_foreign_arrays",
    "register_architecture",
    "resolve_source",
    "resolve_zoo",
    "save_pretrained",
]
