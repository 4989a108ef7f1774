"""Network parts: temporal U-Net, MLPs, observation encoders, time embeddings."""

from robopolicy.nets.embeddings import SinusoidalTimeEmbedding
from robopolicy.nets.encoders import ObservationEncoder
from robopolicy.nets.mlp import MLPDenoiser, mlp
from robopolicy.nets.unet1d import ConditionalUnet1D

__all__ = [
    "ConditionalUnet1D",
    "MLPDenoiser",
    "ObservationEncoder",
    "SinusoidalTimeEmbedding",
    "mlp",
]
