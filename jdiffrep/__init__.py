"""jdiffrep: semantic image representations learned with diffusion models, in JAX/Flax."""

from jdiffrep import clu_compat as _clu_compat

_clu_compat.register_placeholder_without_tensorflow()
