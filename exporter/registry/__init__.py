"""The run registry: runs (a file or a set of files), and per run what the detector did, in SQLite.

``schema`` creates and migrates the database, ``runs`` tells which run a file belongs to,
``writer`` records the runs as the exporter reads them (the one writer), ``reader`` lists,
shows, merges and certifies them.
"""
