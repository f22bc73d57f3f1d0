"""privsplit.export: the trained encoder as quantized TFLite / ONNX artefacts, parity and signed bundles."""
