"""A declarative deep-learning experiment pipeline: params.yaml -> dvc repro -> MLflow."""
