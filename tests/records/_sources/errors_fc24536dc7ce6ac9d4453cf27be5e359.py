"""Errors that reach a user. Each message is one line: what was wrong and what would be valid."""

from __future__ import annotations


class StudyError(Exception):
    """Base class: the CLI prints these as one line and exits non-zero, with no traceback."""


class ConfigError(StudyError):
    pass


class PluginError(StudyError):
    pass


class UnknownName(StudyError):
    pass


class DataError(StudyError):
    pass


class MissingData(DataError):
    """The files of a data set are not under data_root."""

    def __init__(self, dataset: str, root, expected: list[str]):
        self.dataset, self.root, self.expected = dataset, root, expected
        super().__init__(
            f"{dataset}: files not found under {root}; expected one of: {', '.join(expected)}"
        )


class CorruptData(DataError):
    def __init__(self, path, problem: str):
        self.path = path
        super().__init__(f"{path}: {problem}")


class StoreError(StudyError):
    pass


class TrainingFailed(StudyError):
    """Training cannot go on: a non-finite loss, a checkpoint that fails its digest."""
