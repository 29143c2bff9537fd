"""Integrations with frameworks (each installed with its extra: `cachebackd[django]`)."""
