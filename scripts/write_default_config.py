"""Regenerate configs/default.yaml from the code's defaults (a test keeps the two in step)."""

from pathlib import Path

import yaml

from systemhealer.config import Settings

HEADER = """# SystemHealer defaults (the same values as the code's defaults; a test keeps them in step:
# regenerate with `.venv/bin/python scripts/write_default_config.py`).
# Copy this file, change what you need and pass it with `--config FILE` or SYSTEMHEALER_CONFIG.
# Environment variables win over the file: SYSTEMHEALER_HOME, MLFLOW_TRACKING_URI,
# PREFECT_API_URL, and nested fields as SYSTEMHEALER_TRAINING__MAX_EPOCHS=50.
"""

if __name__ == "__main__":
    defaults = Settings().model_dump(
        mode="json", exclude={"home", "mlflow_tracking_uri", "prefect_api_url"}
    )
    target = Path(__file__).resolve().parents[1] / "configs" / "default.yaml"
    body = yaml.safe_dump(defaults, sort_keys=False, default_flow_style=None, width=100)
    target.write_text(HEADER + body)
