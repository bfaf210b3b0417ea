"""Result files: the schema (``schema``), atomic writes and the safe reader (``files``), provenance.

Just above ``config``: data, engine, hardware and report all read or write these files, so their format lives
below all of them. Imports only ``config``.
"""
