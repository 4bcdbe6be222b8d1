"""DVC stage entry points: thin wrappers over the petseg library, run as ``python -m stages.<name>``."""
