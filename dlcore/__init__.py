"""dlcore: the tutorials' networks in Flax linen, one training engine (see README.md)."""
from dlcore import xlaflags as _xlaflags

# Before JAX's CPU backend starts: keep convolutions out of the slower YNNPACK fusion
# (dlcore/xlaflags.py; DLCORE_XLA_DEFAULTS=1 opts out).
_xlaflags.apply()
