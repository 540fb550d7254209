#!/usr/bin/env bash
# The main job on the embedded defaults: shipped demo data, sqlite MLflow, local Prefect.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
TRAIN=data/fault_kpi_train.csv.gz
UNLABELLED=data/fault_kpi_unlabelled_2000.csv.gz
mkdir -p out

echo "== 1/4 validate the training data (Great Expectations)"
$BIN/systemhealer validate "$TRAIN"
echo "== 2/4 train, track in MLflow, register behind the gate (Prefect flow)"
$BIN/systemhealer train "$TRAIN"
echo "== 3/4 calibrate another deployment from its unlabelled incidents, then diagnose them"
$BIN/systemhealer calibrate other-site "$UNLABELLED"
$BIN/systemhealer predict "$UNLABELLED" --deployment other-site --output out/diagnoses.csv
$BIN/systemhealer models
echo "== 4/4 results"
echo "diagnoses:      $(pwd)/out/diagnoses.csv"
echo "state folder:   ${SYSTEMHEALER_HOME:-$(pwd)/.systemhealer}"
echo "MLflow UI:      make mlflow-ui, then open http://127.0.0.1:5000"
if $BIN/systemhealer serve --help >/dev/null 2>&1; then
  echo "== serving the champion on http://127.0.0.1:3000 (Ctrl-C to stop)"
  exec $BIN/systemhealer serve
fi
