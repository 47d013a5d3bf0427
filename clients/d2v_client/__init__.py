"""Client SDK for the data2vec embedding server. Depends on httpx and numpy only."""

__version__ = "0.1.0"
