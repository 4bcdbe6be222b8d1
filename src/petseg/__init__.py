"""petseg: segment pets from background in Oxford-IIIT Pet photos."""

__version__ = "0.1.0"
