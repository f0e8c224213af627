"""Run records on disk, the contract between training and everything downstream.

`writer` writes a run as it trains, `summary` computes summary.json from what was written,
`reader` reads runs back and finds them, `comparison` owns the compare record's files and
`files` the atomic, never-colliding writes they share. No torch.
"""
