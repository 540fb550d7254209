"""One exception hierarchy; the CLI maps it to exit codes, the service to 4xx responses."""


class SystemHealerError(Exception):
    """Base class of every error SystemHealer reports to a user."""

    exit_code = 1


class ConfigError(SystemHealerError):
    """A config file or environment variable is invalid."""

    exit_code = 2


class DataValidationError(SystemHealerError):
    """Incident data cannot be used: unreadable file, wrong schema, bad values or labels."""

    exit_code = 1

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class OutputError(SystemHealerError):
    """A result cannot be written where the user asked for it."""

    exit_code = 2


class BusyError(SystemHealerError):
    """Another process holds what this one needs (a lock): try again later."""

    exit_code = 75  # EX_TEMPFAIL
    http_status = 409


class ModelNotFoundError(SystemHealerError):
    """No model is registered under the requested name, alias or version."""

    exit_code = 3


class ModelDamagedError(ModelNotFoundError):
    """A registered model whose files are missing or cannot be read: it exists, so over HTTP
    a request for it conflicts (409) rather than names nothing (404)."""

    http_status = 409


class DeploymentNotFoundError(SystemHealerError):
    """No calibrated deployment has the requested name."""

    exit_code = 3


class TrainingError(SystemHealerError):
    """Training could not produce a model."""

    exit_code = 4
