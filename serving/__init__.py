"""Serving: the Triton model repository (assembly, configs, features backends), a local server, bank deploys."""
