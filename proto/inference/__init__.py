"""Generated Open Inference Protocol code (``open_inference_grpc_pb2*``); regenerate with
``python -m privsplit.proto.codegen``, never edit by hand."""
