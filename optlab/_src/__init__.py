"""optlab's transforms and their shared machinery (private: import the names from ``optlab``).

One private module per method family (``muon``, ``shampoo``, ``sam``; SOAP and K-FAC join them),
the Kronecker-factor engine the factored methods share, and the ``common`` helpers (validation,
dtype promotion, the NaN/Inf policy). This mirrors optax's ``optax/_src``: modules here may
change; the public API is what ``optlab/__init__.py`` re-exports.
"""
