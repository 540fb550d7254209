"""Typed settings: defaults here, overridden by a YAML config file, overridden by environment.

Environment variables: ``SYSTEMHEALER_HOME`` (state folder), ``SYSTEMHEALER_CONFIG`` (YAML file),
``MLFLOW_TRACKING_URI``, ``PREFECT_API_URL``, and nested fields as
``SYSTEMHEALER_TRAINING__MAX_EPOCHS=50``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from systemhealer.errors import ConfigError

N_KPI_FEATURES = 107
FAULT_CLASSES = (0, 1, 2, 3, 4, 5)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DataSettings(_Section):
    """The data contract: what a file of incidents must look like."""

    min_training_rows: int = Field(50, ge=2)
    min_fault_classes: int = Field(2, ge=2)
    # Columns that look like configuration values: they differ between deployments.
    config_like_columns: tuple[str, ...] = (
        "feature1", "feature20", "feature32", "feature54", "feature60", "feature64",
        "feature65", "feature78", "feature80", "feature88", "feature92",
    )  # fmt: skip
    drift_mostly: float = Field(0.9, gt=0, le=1)
    max_example_rows: int = Field(5, ge=1)


class PreprocessingSettings(_Section):
    """How raw KPI features become network inputs."""

    drop_config_like: bool = True
    balance_reference: bool = True
    ple_bins: int = Field(
        16, ge=0, description="thermometer units per feature; 0 = normal scores only"
    )
    select_top_k: int | None = Field(20, ge=1, description="keep the k most informative columns")
    # A missing KPI value gives the network no evidence (its code is all zeros), or reads as the
    # deployment's median (u = 0.5, models trained before 2026-12). Duplicate-aware 5-fold CV:
    # shift score 0.838 → 0.845, class-balanced macro-F1 0.850 → 0.859 (docs/calibration.md).
    missing_values: Literal["no_evidence", "median"] = "no_evidence"


class TrainingSettings(_Section):
    """The MLP and its optimisation."""

    hidden_sizes: tuple[int, ...] = Field((256, 256, 256), min_length=1)
    dropout: float = Field(0.4, ge=0, lt=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(256, ge=8)
    max_epochs: int = Field(60, ge=1)
    patience: int = Field(15, ge=1, description="epochs without a better validation macro-F1")
    lr_schedule: Literal["onecycle", "constant"] = "onecycle"
    # One member by default: the sweep on the shipped data scored 1 and 3 members alike
    # (0.780/0.789 vs 0.784/0.776 in-distribution/shift) at a third of the inference cost.
    ensemble_size: int = Field(1, ge=1, description="MLPs from consecutive seeds, averaged")
    class_weighted: bool = True
    label_smoothing: float = Field(0.05, ge=0, lt=1)
    # Share of each training target taken from a random forest's out-of-bag probabilities
    # (knowledge distillation; the forest is used only while training). 0 = labels only.
    distill_weight: float = Field(0.5, ge=0, lt=1)
    teacher_trees: int = Field(300, ge=10)
    seed: int = 42
    # 0: no early stopping — the network trains for max_epochs on every non-evaluation row and
    # its per-epoch curves are measured on the evaluation part (shown, never used to choose).
    # In duplicate-aware CV that scored +0.008 over a 15 % validation part with early stopping.
    validation_fraction: float = Field(0.0, ge=0, lt=0.5)
    evaluation_fraction: float = Field(0.15, gt=0, lt=0.5)
    torch_threads: int = Field(0, ge=0, description="0 = torch default")
    # Train on simulated deployments' statistics (off: -0.01…-0.03 macro-F1 in shift studies).
    pseudo_deployments: bool = False
    p_training_reference: float = Field(0.2, ge=0, le=1)
    # Class-conditional swap noise: each epoch, about this share of every training incident's
    # KPI values is replaced by the same KPI of another incident of its fault class
    # (shift.swap_within_class). 0 = off.
    swap_share: float = Field(0.3, ge=0, lt=1)
    # Per-cell noise: each epoch about this share of the training incidents has every KPI value
    # offset by its own U(0, cell_noise) times the KPI's mean — upwards, or for half of them
    # downwards (shift.cell_noise). The shipped unlabelled deployment holds such noisy copies
    # (offsets U(0, 0.1) · mean) beside clean incidents; a window of one kind reading incidents
    # of the other then misplaces narrow KPIs (docs/calibration.md). 0 = off.
    cell_noise: float = Field(0.15, ge=0, lt=1)
    cell_noise_share: float = Field(0.5, ge=0, le=1)


class EvaluationSettings(_Section):
    """Held-out evaluation and the promotion gate."""

    shift_copies: int = Field(3, ge=1, description="simulated deployments for the shift score")
    # A third simulation: balanced shifted copies with this share of each incident's KPI values
    # swapped within its class (KPIs that go together less tightly, as on the shipped unlabelled
    # deployment; shift.swap_within_class).
    shift_swap_share: float = Field(0.3, ge=0, lt=1)
    # A fourth: balanced shifted copies whose second half has every value offset by its own
    # U(0, this) times the KPI's mean; the clean half calibrates the scoring of the noisy half
    # and the reverse, as the two kinds of incidents of the shipped unlabelled deployment would
    # (shift.cell_noise, docs/calibration.md).
    shift_cell_noise: float = Field(0.1, gt=0, lt=1)
    # The gate also requires the shift score (mean of the four calibrated simulations) to be
    # at least the champion's.
    gate_on_shift: bool = True


class CalibrationSettings(_Section):
    """Deployment calibration from unlabelled reference windows."""

    min_reference_rows: int = Field(20, ge=2)
    max_reference_rows: int = Field(50_000, ge=10)
    # Read a deployment's reference window at its estimated class mix (the model's per-class
    # response, alternated with the statistics until the mix settles) instead of assuming it is
    # mixed like the class-balanced training reference. Simulated deployments mixed like the
    # training file: macro-F1 0.66 → 0.77; balanced ones unchanged (docs/calibration.md).
    read_class_mix: bool = True
    # Also re-weight probabilities towards that estimated mix (Saerens et al., 2002; needs
    # read_class_mix and a model with per-class statistics): to λ·mix + (1−λ)·balanced with
    # λ = label_shift_correction (0 = off). Simulated deployments, against no re-weighting:
    # λ = 1 gained +0.03…0.05 macro-F1 at skewed mixes and lost 0.009 at balanced ones;
    # λ = 0.5 kept most of the gain (+0.03…0.04) for half the loss (docs/calibration.md).
    label_shift_correction: float = Field(0.5, ge=0, le=1)
    min_class_share: float = Field(
        0.02, ge=0, lt=1 / 6, description="floor of each estimated class share"
    )


class RegistrySettings(_Section):
    """MLflow names."""

    model_name: str = "fault-diagnosis"
    champion_alias: str = "champion"
    experiment_name: str = "fault-diagnosis"


class ServingSettings(_Section):
    """The BentoML service."""

    host: str = "127.0.0.1"
    port: int = Field(3000, ge=1, le=65535)
    max_batch_incidents: int = Field(10_000, ge=1)
    max_body_mb: float = Field(64, gt=0)
    max_upload_mb: float = Field(200, gt=0)
    model_poll_seconds: float = Field(5.0, gt=0)
    api_token: str | None = None
    # One log line per request costs ~0.4 ms of CPU, as much as the rest of the HTTP stack;
    # /metrics counts requests per endpoint and status either way.
    access_log: bool = False
    # BentoML model tag to serve instead of the registry's champion (set inside a Bento built
    # by `systemhealer bento`, which has no registry to poll).
    bundled_model: str | None = None
    class_names: tuple[str, ...] = tuple(f"Class {c}" for c in FAULT_CLASSES)


class ScheduleSettings(_Section):
    """Scheduled retraining and drift checks."""

    retrain_cron: str = "0 2 * * *"
    drift_cron: str = "30 * * * *"
    prefect_port: int = Field(4200, ge=1, le=65535)
    # Drop folders; relative paths are under the state folder.
    inbox: Path = Field(Path("inbox"), description="labelled files to merge, then retrain")
    drift_inbox: Path = Field(Path("drift-inbox"), description="unlabelled files to check")
    # A file younger than this may still be being copied in: it waits for the next run.
    settle_seconds: float = Field(5.0, ge=0)
    max_file_mb: float = Field(500, gt=0)
    retrain_without_new_data: bool = False
    # Population stability index per feature (signed-log values, training deciles).
    drift_psi_threshold: float = Field(0.25, gt=0)
    # The data set counts as drifted when at least this share of features drifted.
    drift_feature_share: float = Field(0.1, gt=0, le=1)
    # PSI over ten bins of n incidents drawn from the very baseline is expected to average
    # about 9/n (0.3 at 30 incidents: past the 0.25 mark with no drift at all); samples of 100
    # from a deployment's window stay clear of it (tests/test_drift.py).
    drift_min_rows: int = Field(100, ge=2)
    keep_drift_reports: int = Field(200, ge=1)


class ScoringSettings(_Section):
    """Batch scoring."""

    # Rows parsed and scored at a time: memory grows with it (~4 KB a row at peak), speed
    # hardly does beyond a few thousand.
    chunk_rows: int = Field(5_000, ge=1)
    # The Great Expectations contract runs on the first rows of each file, in a child process
    # beside the job (importing GX costs ~4 s of CPU); every chunk gets the same row-level
    # checks in numpy. 0 = numpy checks only.
    gx_sample_rows: int = Field(2_000, ge=0)
    # Partitions per file when a job runs on a Dask cluster.
    partitions: int = Field(4, ge=1)


class WebSettings(_Section):
    """The web page mounted in the service (``/``): its job queue and links."""

    # Background jobs run one at a time per kind by default; more only with cores to spare.
    training_workers: int = Field(1, ge=1)
    scoring_workers: int = Field(1, ge=1)
    # Finished jobs (and their files) kept under `jobs_dir`; the oldest go first.
    keep_jobs: int = Field(100, ge=1)
    # Uploads waiting to be trained on or diagnosed, all together; the oldest go first when a
    # new one would not fit (the new one is always kept).
    max_stored_uploads_mb: float = Field(2048, gt=0)
    # Rows read, validated and diagnosed at a time when the page scores a file: a job's memory
    # holds one chunk (and the diagnoses), not the file.
    chunk_rows: int = Field(10_000, ge=100)
    # Points drawn in embedding scatter plots (a random sample of larger files).
    embedding_points: int = Field(2_000, ge=10)
    mlflow_ui_url: str = "http://127.0.0.1:5000"
    # None = the configured Prefect API's server, else the `systemhealer schedule` server.
    prefect_ui_url: str | None = None


class Settings(BaseSettings):
    """Every setting of SystemHealer, frozen once built."""

    model_config = SettingsConfigDict(
        env_prefix="SYSTEMHEALER_",
        env_nested_delimiter="__",
        frozen=True,
        extra="forbid",
    )

    home: Path = Path(".systemhealer")
    mlflow_tracking_uri: str | None = Field(
        None, validation_alias=AliasChoices("MLFLOW_TRACKING_URI", "mlflow_tracking_uri")
    )
    prefect_api_url: str | None = Field(
        None, validation_alias=AliasChoices("PREFECT_API_URL", "prefect_api_url")
    )
    data: DataSettings = DataSettings()
    preprocessing: PreprocessingSettings = PreprocessingSettings()
    training: TrainingSettings = TrainingSettings()
    evaluation: EvaluationSettings = EvaluationSettings()
    calibration: CalibrationSettings = CalibrationSettings()
    registry: RegistrySettings = RegistrySettings()
    serving: ServingSettings = ServingSettings()
    scoring: ScoringSettings = ScoringSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    web: WebSettings = WebSettings()

    @field_validator("home")
    @classmethod
    def _absolute_home(cls, home: Path) -> Path:
        return home.expanduser().resolve()

    # --- derived locations (all state lives under `home`) ---
    @property
    def tracking_uri(self) -> str:
        """MLflow tracking URI: the configured one, else sqlite under the state folder."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path:
        return self.home / "mlartifacts"

    @property
    def deployments_dir(self) -> Path:
        return self.home / "deployments"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def prefect_home(self) -> Path:
        return self.home / "prefect"

    @property
    def inbox_dir(self) -> Path:
        """Labelled incident files dropped here are merged by the retraining flow."""
        return self.home / self.schedule.inbox

    @property
    def archive_dir(self) -> Path:
        return self.home / "inbox-archive"

    @property
    def rejected_dir(self) -> Path:
        return self.home / "inbox-rejected"

    @property
    def training_data_dir(self) -> Path:
        """The training data set the retraining flow grows (Parquet + manifest)."""
        return self.home / "training-data"

    @property
    def drift_inbox_dir(self) -> Path:
        """Unlabelled incident files dropped here are checked by the drift flow."""
        return self.home / self.schedule.drift_inbox

    @property
    def drift_reports_dir(self) -> Path:
        return self.home / "drift"

    @property
    def locks_dir(self) -> Path:
        return self.home / "locks"

    @property
    def model_uri(self) -> str:
        return f"models:/{self.registry.model_name}@{self.registry.champion_alias}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file, which is passed in as init values.
        return (env_settings, init_settings)


def load_settings(config_file: Path | str | None = None) -> Settings:
    """Build the settings from a YAML file (or ``SYSTEMHEALER_CONFIG``) and the environment."""
    path = config_file or os.environ.get("SYSTEMHEALER_CONFIG")
    values: dict[str, Any] = {}
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError as exc:
            raise ConfigError(f"config file not found: {path}") from exc
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"config file {path} must hold a mapping of sections")
        values = loaded or {}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from exc
    except SettingsError as exc:  # an environment variable that is not valid JSON
        raise ConfigError(f"invalid settings in the environment: {exc}") from exc
    return settings
