"""Data: each declared dataset ingested from its source and preprocessed into split files.

`datasets` is the interface the stages use (ingest, preprocess, read the processed splits);
`table`, `text` and `vision` are the sources beside the bundled ones; `preprocessing` holds
the fitted preprocessing the registered model carries; `store` writes split files, schemas
and hashes; `splits` draws the splits. Kept empty: the served model ships `preprocessing`
alone.
"""
