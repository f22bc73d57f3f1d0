"""privsplit.proto: Open Inference Protocol sources, generated code and serde."""
