"""Every artifact path, defined once. tests/test_paths.py checks that dvc.yaml agrees."""

from pathlib import Path

PARAMS = Path("params.yaml")
DVC_LOCK = Path("dvc.lock")

DATA = Path("data")
ARTIFACTS = Path("artifacts")
REPORTS = Path("reports")
EXPERIMENT_REPORTS = REPORTS / "experiments"
REPORT_MD = REPORTS / "index.md"
REPORT_HTML = REPORTS / "index.html"

SPLITS = ("train", "val", "test")


def raw_dir(dataset: str) -> Path:
    return DATA / "raw" / dataset


def processed_dir(dataset: str) -> Path:
    return DATA / "processed" / dataset


def split_file(dataset: str, split: str) -> Path:
    return processed_dir(dataset) / f"{split}.npz"


def schema_file(dataset: str) -> Path:
    return processed_dir(dataset) / "schema.json"


def artifact_dir(experiment: str) -> Path:
    return ARTIFACTS / experiment


def model_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "model.pt"


def checkpoint_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "checkpoint.pt"


def history_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "history.csv"


def resolved_config_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "config.yaml"


def augment_preview(experiment: str) -> Path:
    """A grid of training images before and after the declared augmentation."""
    return artifact_dir(experiment) / "augmentations.png"


def train_summary_file(experiment: str) -> Path:
    """Training time, throughput, device and the MLflow run id that evaluate nests under."""
    return artifact_dir(experiment) / "train.json"


def report_dir(experiment: str) -> Path:
    return EXPERIMENT_REPORTS / experiment


def metrics_file(experiment: str) -> Path:
    return report_dir(experiment) / "metrics.json"


def summary_file(experiment: str) -> Path:
    """Everything the report shows about one experiment (metrics, training facts, run ids)."""
    return report_dir(experiment) / "summary.json"


def details_file(experiment: str) -> Path:
    """Per-class metrics, baseline errors and other detail beyond metrics.json."""
    return report_dir(experiment) / "details.json"


def plots_dir(experiment: str) -> Path:
    """PNG figures of one experiment (curves, confusion, forecasts, sample grids)."""
    return report_dir(experiment) / "plots"


def confusion_csv(experiment: str) -> Path:
    """(actual, predicted) per test sample for DVC's confusion template; header only when the
    task has no classes."""
    return report_dir(experiment) / "confusion.csv"


def judge_dir(dataset: str) -> Path:
    """The classifier that scores generated images of `dataset` (see stages/judge.py)."""
    return ARTIFACTS / "judges" / dataset
