"""Step-Audio serving backend: gRPC services, controller and model runtime."""
