"""Message schemas shared by the ServerApp strategies and the ClientApp handlers.

A protocol's strategy (``strategies/``) and its client (``clients/``) agree on
message types and record keys through one module here, and every field read
from a received message goes through :mod:`schemas.validation`.
"""
