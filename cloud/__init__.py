"""privsplit.cloud: the gRPC backend hosting the server layers and the purifier."""
