"""``graphc.nn``: modules and layers, as ``torch.nn``."""

from graphc.nn import functional
from graphc.nn.layers import Dropout, Flatten, Identity, Linear, LogSoftmax, ReLU, Sequential, Sigmoid, Softmax, Tanh
from graphc.nn.layers_spatial import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    Embedding,
    LayerNorm,
    MaxPool2d,
)
from graphc.nn.module import Module
from graphc.nn.parameter import Parameter
from graphc.nn.recurrent import GRU, LSTM, RNN

__all__ = ["functional", "Module", "Parameter", "Linear", "ReLU", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
           "Identity", "Flatten", "Sequential", "Dropout",
           "Conv2d", "MaxPool2d", "AvgPool2d", "AdaptiveAvgPool2d", "BatchNorm1d", "BatchNorm2d", "Embedding",
           "LayerNorm", "RNN", "LSTM", "GRU"]
