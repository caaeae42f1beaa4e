"""The plain U-Net encoder (Ronneberger et al., MICCAI 2015) as a registered encoder, ``"unet"``.

The class lives in :mod:`seglab.layers.encoder`; its options (``base_channels``, ``channels``,
``down``, ``norm``, ``act``, ``dropout``, ``valid``) are the U-Net family's.
"""

from seglab.layers.encoder import UNetEncoder
from seglab.models.encoders._registry import register_encoder

register_encoder("unet", UNetEncoder)
