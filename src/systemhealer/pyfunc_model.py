"""The MLflow pyfunc model, logged as code ("models from code"): a logged run holds this file,
the ``systemhealer`` package and the diagnoser's JSON + weights, and no pickled object."""

import mlflow

from systemhealer.tracking import DiagnosisPyfunc

mlflow.models.set_model(DiagnosisPyfunc())
