"""`lazymod.nn`: a drop-in namespace for `equinox.nn`. Layers that need to know their
input's shape are lazy here (declared without it, built by `lazymod.init`, and
`equinox.nn` layers afterwards); every other name is Equinox's own."""

from equinox.nn import (
    AdaptiveAvgPool1d as AdaptiveAvgPool1d,
    AdaptiveAvgPool2d as AdaptiveAvgPool2d,
    AdaptiveAvgPool3d as AdaptiveAvgPool3d,
    AdaptiveMaxPool1d as AdaptiveMaxPool1d,
    AdaptiveMaxPool2d as AdaptiveMaxPool2d,
    AdaptiveMaxPool3d as AdaptiveMaxPool3d,
    AdaptivePool as AdaptivePool,
    AvgPool1d as AvgPool1d,
    AvgPool2d as AvgPool2d,
    AvgPool3d as AvgPool3d,
    delete_init_state as delete_init_state,
    Identity as Identity,
    inference_mode as inference_mode,
    Lambda as Lambda,
    make_with_state as make_with_state,
    MaxPool1d as MaxPool1d,
    MaxPool2d as MaxPool2d,
    MaxPool3d as MaxPool3d,
    Pool as Pool,
    Sequential as Sequential,
    State as State,
    StatefulLayer as StatefulLayer,
    StateIndex as StateIndex,
)

from ._batch_norm import BatchNorm as BatchNorm
from ._conv import Conv as Conv, Conv1d as Conv1d, Conv2d as Conv2d, Conv3d as Conv3d
from ._conv_transpose import (
    ConvTranspose as ConvTranspose,
    ConvTranspose1d as ConvTranspose1d,
    ConvTranspose2d as ConvTranspose2d,
    ConvTranspose3d as ConvTranspose3d,
)
from ._dropout import Dropout as Dropout
from ._embedding import Embedding as Embedding
from ._lazy import LazyLayer as LazyLayer
from ._linear import Linear as Linear
from ._multihead import MultiheadAttention as MultiheadAttention
from ._multilayer import MLP as MLP
from ._norm import GroupNorm as GroupNorm, LayerNorm as LayerNorm, RMSNorm as RMSNorm
from ._prelu import PReLU as PReLU
from ._recurrent import GRUCell as GRUCell, LSTMCell as LSTMCell
from ._rotary import RotaryPositionalEmbedding as RotaryPositionalEmbedding
from ._shared import Shared as Shared
from ._spectral_norm import SpectralNorm as SpectralNorm
from ._weight_norm import WeightNorm as WeightNorm
