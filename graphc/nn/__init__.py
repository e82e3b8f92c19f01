"""``graphc.nn``: modules and layers, as ``torch.nn``."""

from graphc.nn import functional
from graphc.nn.layers import (
    GELU,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    LogSoftmax,
    ReLU,
    Sequential,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
)
from graphc.nn.layers_spatial import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv1d,
    Conv2d,
    ConvTranspose2d,
    Embedding,
    LayerNorm,
    MaxPool2d,
    Upsample,
    UpsamplingBilinear2d,
    UpsamplingNearest2d,
)
from graphc.nn.loss import BCELoss, BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, NLLLoss
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.nn.recurrent import GRU, LSTM, RNN
from graphc.user_messages import module_getattr as _module_getattr

__getattr__ = _module_getattr(__name__, "nn.")  # nn.Conv3d: "graphc has no nn.Conv3d; ... nn has: ..."

__all__ = ["functional", "Module", "Parameter", "Linear", "ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Identity", "Flatten", "Sequential", "Dropout",
           "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Embedding",
           "LayerNorm", "RNN", "LSTM", "GRU", "GELU", "LeakyReLU", "Softplus", "Conv1d", "ConvTranspose2d",
           "Upsample", "UpsamplingNearest2d", "UpsamplingBilinear2d",
           "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "BCELoss", "BCEWithLogitsLoss"]
