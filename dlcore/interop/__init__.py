"""Bringing weights from other frameworks into dlcore (PyTorch: `dlcore.interop.torch`)."""
