"""What the coordinator and the silo agents both need: wire codec, TLS, adapters, data format."""

__version__ = "0.1.0"
