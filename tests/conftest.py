"""Four host CPU devices for the pmap/sharded tests; must run before JAX touches a device.

The suite runs on the CPU. `DLCORE_TEST_PLATFORM=gpu` (set by `python -m benchmarks.gpu_check`)
leaves JAX on its default backend instead, so the tests that touch the device run on a GPU."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 4)

from dlcore.harness import jaxcache  # noqa: E402

jaxcache.enable()  # a second run of the suite skips compilation (DLCORE_JAX_CACHE=0: off)
if os.environ.get("DLCORE_TEST_PLATFORM", "cpu") == "cpu":
  jax.config.update("jax_platforms", "cpu")
