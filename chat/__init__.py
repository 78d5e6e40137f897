"""chat: a real-time web chat service on aiohttp that stays connected."""

__version__ = "0.1.0"
