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


def raw_array_file(dataset: str, key: str) -> Path:
    """One ingested array (`x`, `y`; a series' values and times) of a non-table source."""
    return raw_dir(dataset) / f"{key}.npy"


def raw_table_file(dataset: str) -> Path:
    """An ingested `table` or `text` source: the user's file as Parquet."""
    return raw_dir(dataset) / "table.parquet"


def raw_meta_file(dataset: str) -> Path:
    """What ingest found: source, sample count, classes, skipped files."""
    return raw_dir(dataset) / "meta.json"


def processed_dir(dataset: str) -> Path:
    return DATA / "processed" / dataset


def split_dir(dataset: str, split: str) -> Path:
    """One split's arrays, a .npy file each (`x.npy`, `y.npy`, ...)."""
    return processed_dir(dataset) / split


def schema_file(dataset: str) -> Path:
    return processed_dir(dataset) / "schema.json"


def synthetic_samples_file(dataset: str) -> Path:
    """A synthetic dataset's generated images, a column per class (synthesize@)."""
    return processed_dir(dataset) / "samples.png"


PREPROCESSOR = "preprocessor.json"


def preprocessor_file(dataset: str) -> Path:
    """The preprocessing fitted on the train split; the registered model carries it."""
    return processed_dir(dataset) / PREPROCESSOR


def artifact_dir(experiment: str) -> Path:
    return ARTIFACTS / experiment


def model_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "model.pt"


def checkpoint_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "checkpoint.pt"


def history_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "history.csv"


def train_plots_dir(experiment: str) -> Path:
    """train's DVC plots: the learning curves, and a preview of image inputs."""
    return artifact_dir(experiment) / "plots"


def curves_file(experiment: str) -> Path:
    """The learning curves in long form (epoch, panel, series, value), DVC's plot of them."""
    return train_plots_dir(experiment) / "curves.csv"


def resolved_config_file(experiment: str) -> Path:
    return artifact_dir(experiment) / "config.yaml"


def augment_preview(experiment: str) -> Path:
    """A grid of training images before and after the declared augmentation (images only)."""
    return train_plots_dir(experiment) / "augmentations.png"


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
    """Every test metric (`metrics`; metrics.json holds the headline), per-class metrics,
    baseline errors and other detail: what evaluation computed, nothing about the run (that
    is summary.json), so that it is the same with tracking on or off."""
    return report_dir(experiment) / "details.json"


def plots_dir(experiment: str) -> Path:
    """PNG figures of one experiment (curves, confusion, forecasts, sample grids)."""
    return report_dir(experiment) / "plots"


def confusion_csv(experiment: str) -> Path:
    """(actual, predicted) per test sample of a classifier, for DVC's confusion template."""
    return plots_dir(experiment) / "confusion.csv"


def judge_dir(dataset: str) -> Path:
    """The classifier that scores generated images of `dataset` (see stages/judge.py)."""
    return ARTIFACTS / "judges" / dataset


def judge_model_file(dataset: str) -> Path:
    return judge_dir(dataset) / "model.pt"


def judge_info_file(dataset: str) -> Path:
    """Whether the dataset has a judge (or why not), its architecture and test accuracy."""
    return judge_dir(dataset) / "judge.json"


JUDGE_PLAN = ARTIFACTS / "judge_plan"  # whether each dataset needs a judge (stages/plan.py)
TUNE_PLAN = ARTIFACTS / "tune_plan"  # what each experiment's search depends on (stages/plan.py)


def judge_plan_file(dataset: str) -> Path:
    """Whether `dataset` needs a judge; judge@<dataset> depends on this file alone."""
    return JUDGE_PLAN / f"{dataset}.json"


def tune_plan_file(experiment: str) -> Path:
    """The params tune@<experiment> depends on (only "no tuning" when it does not tune)."""
    return TUNE_PLAN / f"{experiment}.json"


def tuning_dir(experiment: str) -> Path:
    """tune@'s kept output (persist: a killed search resumes): tuned.yaml, and the study's
    journal when the experiment is tuned. Never empty, so DVC never warns about it."""
    return artifact_dir(experiment) / "tuning"


def tuned_file(experiment: str) -> Path:
    """The best trial's params as nested overrides (`{}` when tuning is off); train reads it."""
    return tuning_dir(experiment) / "tuned.yaml"


def study_journal(experiment: str) -> Path:
    """Optuna's journal of the experiment's studies (tuned experiments, default storage)."""
    return tuning_dir(experiment) / "study.journal"


def study_lock(experiment: str) -> Path:
    """Held while a local worker claims its next trial, so the count never overshoots."""
    return artifact_dir(experiment) / "study.lock"


def tuning_report_dir(experiment: str) -> Path:
    """What the search found, for the report: trials.csv, tuning.json and (tuned experiments)
    the figures. Never empty: tuning.json says when tuning is off."""
    return report_dir(experiment) / "tuning"


def trials_csv(experiment: str) -> Path:
    return tuning_report_dir(experiment) / "trials.csv"


def tuning_summary(experiment: str) -> Path:
    """Study name, counts by state, best trial, Pareto front, epochs and time spent."""
    return tuning_report_dir(experiment) / "tuning.json"


def tuning_plots_dir(experiment: str) -> Path:
    """PNG figures of the search: history, importances, parallel coordinates, Pareto front."""
    return tuning_report_dir(experiment) / "figures"
