"""The sections of the params.yaml schema, one module each: datasets, models, training
(with evaluation and tracking) and tuning. `pipeline.config` assembles them into `Params` and
loads the file."""
