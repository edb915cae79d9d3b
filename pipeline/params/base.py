"""What every section of the schema shares: strict frozen models, URLs without passwords, and
names that are safe as folder and run names."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _no_password(url: str) -> str:
    """A URL in params.yaml must not carry a password: params are copied into dvc.lock,
    MLflow and the report. Credentials come from the environment instead."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        secret = parts.password
    except ValueError:  # not a URL with a parsable network location
        secret = None
    if secret:
        shown = url.replace(f":{secret}@", ":***@", 1)
        raise ValueError(
            f"holds a password ({shown}); params.yaml is copied into dvc.lock, MLflow and the "
            "report, so give credentials in the environment: MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD for an MLflow server, PGPASSWORD for PostgreSQL, "
            "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY for S3"
        )
    return url


Url = Annotated[str, AfterValidator(_no_password)]


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def unsafe_name(name: str) -> str | None:
    """Why `name` cannot name folders (data/raw/<name>, artifacts/<name>) and MLflow runs and
    models, or None. Path separators and '..' could reach outside the project's folders."""
    if SAFE_NAME.fullmatch(name) and ".." not in name:
        return None
    return (
        f"{name!r} is not a safe name: use letters, digits, '_', '-' and '.', starting with a "
        "letter or digit (no '/', '\\' or '..'): it names folders and MLflow runs"
    )
