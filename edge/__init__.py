"""privsplit.edge: the torch-free on-device runtime. Never import torch (or anything that does) here."""
