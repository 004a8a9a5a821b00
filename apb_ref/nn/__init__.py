"""Modules (PyTorch's shape: parameters, buffers, state dicts, train/eval) and optimizers."""
from .modules import (  # noqa: F401
    ACTIVATIONS, ActivationScale, AvgPool2d, BatchNorm, BatchNorm1d, BatchNorm2d, ChannelShift, Conv2d, Dropout, Flatten, GlobalAvgPool2d, Hardtanh, Lambda,
    Linear, MaxPool2d, Module, Parameter, ReLU, RPReLU, Sequential, activation, batch_norm_act, kaiming_normal,
    kaiming_uniform,
)
