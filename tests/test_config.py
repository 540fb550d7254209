import os
from pathlib import Path

import pytest
import yaml

from systemhealer.config import Settings, load_settings
from systemhealer.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_shipped_default_config_matches_code_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in [k for k in os.environ if k.startswith("SYSTEMHEALER_TRAINING")]:
        monkeypatch.delenv(key)
    shipped = load_settings(REPO / "configs" / "default.yaml")
    assert shipped.model_dump(exclude={"home"}) == Settings().model_dump(exclude={"home"})


def test_yaml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"training": {"max_epochs": 7, "dropout": 0.3}}))
    monkeypatch.setenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", "9")
    monkeypatch.setenv("SYSTEMHEALER_HOME", str(tmp_path / "state"))
    settings = load_settings(config)
    assert settings.training.max_epochs == 9  # environment wins
    assert settings.training.dropout == 0.3  # YAML beats the default
    assert settings.home == (tmp_path / "state").resolve()
    assert settings.tracking_uri == f"sqlite:///{(tmp_path / 'state' / 'mlflow.db').resolve()}"


def test_mlflow_uri_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert load_settings().tracking_uri == "http://127.0.0.1:5000"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("training: {max_epochs: -1}", "training.max_epochs"),
        ("training: {no_such_thing: 1}", "no_such_thing"),
        ("training: [1, 2", "not valid YAML"),
        ("- just a list", "mapping"),
    ],
)
def test_bad_config_is_refused_clearly(
    tmp_path: Path, content: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SYSTEMHEALER_TRAINING__MAX_EPOCHS", raising=False)
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_settings(config)


def test_settings_are_frozen() -> None:
    settings = load_settings()
    with pytest.raises(ValueError):
        settings.training.max_epochs = 3  # type: ignore[misc]
