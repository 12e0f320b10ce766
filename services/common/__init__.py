"""Code shared by more than one service (settings, gRPC plumbing, audio, errors, metrics)."""
