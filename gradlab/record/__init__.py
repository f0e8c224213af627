"""Run records on disk, the contract between training and everything downstream.

`writer` writes a run as it trains (`guard` checks every write), `summary` computes
summary.json from what was written, `reader` reads runs back and finds them (`bounded` reads
CSVs in bounded memory, `validate` says what is corrupt), `comparison` owns the compare
record's files, `files` the atomic, never-colliding writes they share and `stopping` how
SIGINT, SIGTERM and SIGHUP stop a run. No torch.
"""
