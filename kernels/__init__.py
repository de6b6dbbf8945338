"""Hot device code of lqs (imported as ``lqs.kernels``): counter-based RNG, the batched scheduler step, KV accounting."""
