"""FeatureCache: train the upper layers on cached outputs of the frozen lower layers.

:mod:`.callback` holds the callback; ``_session`` the state of one fit; ``_build``, ``_disk``, ``_files``,
``_loaders``, ``_store`` and ``_trunk`` its parts; ``_lightning`` every use of Lightning's internals.
"""

from lightning_dnn.callbacks.feature_cache.callback import FeatureCache

__all__ = ["FeatureCache"]
