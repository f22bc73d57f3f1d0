"""A real small-CNN digits split model, briefly trained on a split's members: shared by the feature-probe tests."""

from __future__ import annotations


def tiny_digits_model(*, feature_channels: int, noise_sigma: float, num_private_classes: int | None = None):
    """A fresh small-CNN split model for 16 px digits: split after block 1, width 16, built after seeding torch
    with 0."""
    import torch

    from privsplit.models import Arch, ModelConfig, build_split_model

    config = ModelConfig(
        arch=Arch.SMALL_CNN,
        in_channels=1,
        image_size=16,
        num_classes=10,
        split=1,
        feature_channels=feature_channels,
        width=16,
        noise_sigma=noise_sigma,
        num_private_classes=num_private_classes,
        mean=(0.3,),
        std=(0.3,),
    )
    torch.manual_seed(0)
    return build_split_model(config)


def train_tiny_digits_model(data, split, *, feature_channels: int, noise_sigma: float, epochs: int):
    """:func:`tiny_digits_model`, trained with Adam 3e-3 in batches of 32."""
    import torch
    from torch.nn import functional as F

    from privsplit.data import Part

    model = tiny_digits_model(feature_channels=feature_channels, noise_sigma=noise_sigma)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    members = split[Part.MEMBERS]
    x, y = model.preprocess(data.images[members]), torch.from_numpy(data.task_labels[members])
    for _ in range(epochs):
        for i in range(0, len(x), 32):
            loss = F.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model
