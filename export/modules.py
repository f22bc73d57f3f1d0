"""The torch modules that are converted: what each artefact computes, exactly.

* :class:`NormalisedEncoder`: ``x01`` (pixel / 255, NCHW) -> ``encoder((x01 - mean) / std)``. The
  normalisation lives in the artefact, so the device feeds pixel / 255 and an int8 artefact can take
  ``pixel - 128`` losslessly (input scale 1/255, zero point -128). No noise: converters do not
  carry random ops; the device adds it after the encoder.
* :class:`ChannelLastIO`: NHWC in, NHWC out around a NCHW module (the ONNX encoders; the TFLite
  route uses ``litert_torch.to_channel_last_io``, which the converter folds into its own layout).
* :class:`ServerWithSoftmax`: features ``(B, C, h, w)`` -> probabilities ``(B, K)``.
"""

from __future__ import annotations

import torch
from torch import nn

from privsplit.models import SplitModel


class NormalisedEncoder(nn.Module):
    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.encoder = model.encoder
        self.register_buffer("mean", model.mean.detach().clone())
        self.register_buffer("std", model.std.detach().clone())

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.encoder((x01 - self.mean) / self.std)


class ChannelLastIO(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ServerWithSoftmax(nn.Module):
    def __init__(self, model: SplitModel) -> None:
        super().__init__()
        self.head = model.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.head(features), dim=1)


def edge_encoder(model: SplitModel) -> NormalisedEncoder:
    """The encoder artefact's module in eval mode (NCHW; wrap for NHWC I/O per backend)."""
    return NormalisedEncoder(model).eval()


def server_module(model: SplitModel) -> ServerWithSoftmax:
    return ServerWithSoftmax(model).eval()
