"""User-facing errors: caught by the stage CLIs and printed as one clear message."""


class PipelineError(Exception):
    """Bad input or a missing prerequisite; the message says what is wrong and what is right."""


class TrackingError(RuntimeError):
    """MLflow failed a call of a stage's run (the store unreachable, a call refused). Not bad
    input: the stage exits 1, and the flows retry it as a transient failure."""


class ParamsError(PipelineError):
    """params.yaml is unreadable or does not match the schema."""

    def __init__(self, path, problems: list[str]):
        self.path = str(path)
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        super().__init__(f"{self.path} is invalid ({count}):\n{lines}")
