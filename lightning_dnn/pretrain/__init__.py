"""Unsupervised and auxiliary-task pretraining: an autoencoder, a siamese pair model and its pair sampler.

Both modules train ``self.encoder``, a network with ``hidden1..N`` blocks (an :class:`~lightning_dnn.nn.MLP`);
``save_pretrained(model.encoder, folder)`` writes it so that ``load_pretrained(folder, include="hidden[1-3]",
into=net)`` reuses its lower layers, as any zoo entry.
"""

from lightning_dnn.pretrain._decoder import MirrorDecoder, TiedLinear
from lightning_dnn.pretrain.autoencoder import Autoencoder
from lightning_dnn.pretrain.pairs import PairDataModule, sample_pairs
from lightning_dnn.pretrain.siamese import SiamesePretrainer

__all__ = [
    "Autoencoder",
    "MirrorDecoder",
    "PairDataModule",
    "SiamesePretrainer",
    "TiedLinear",
    "sample_pairs",
]
