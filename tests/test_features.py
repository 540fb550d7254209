"""Deployment-relative preprocessing: calibration undoes rescaling; labels are never needed."""

from __future__ import annotations

import numpy as np
import pandas as pd

from systemhealer.config import PreprocessingSettings
from systemhealer.data import KPI_FEATURES
from systemhealer.features import DeploymentStats, KpiPreprocessor, class_balanced_weights
from systemhealer.label_shift import correct_probabilities, estimate_class_mix
from systemhealer.shift import apply_shift, random_shift, resample_class_mix

CONFIG_LIKE = ("feature1", "feature20")


def fitted(frame: pd.DataFrame) -> KpiPreprocessor:
    return KpiPreprocessor.fit(
        frame[list(KPI_FEATURES)], frame["label"].to_numpy(), PreprocessingSettings(), CONFIG_LIKE
    )


def test_constant_and_config_columns_are_dropped(small_training_frame: pd.DataFrame) -> None:
    pre = fitted(small_training_frame)
    assert "feature57" not in pre.columns and "feature1" not in pre.columns
    assert pre.n_inputs == len(pre.columns) * 17
    out = pre.transform(small_training_frame)
    assert out.shape == (len(small_training_frame), pre.n_inputs) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_calibration_undoes_a_synthetic_rescaling(
    small_training_frame: pd.DataFrame, unlabelled_frame: pd.DataFrame
) -> None:
    pre = fitted(small_training_frame)
    reference, scored = unlabelled_frame.iloc[:1000], unlabelled_frame.iloc[1000:1200]
    spec = random_shift(np.random.default_rng(3), pre.columns, CONFIG_LIKE)
    assert max(spec.scale.values()) >= 100 or min(spec.scale.values()) <= 0.01
    original = pre.transform(scored, pre.measure_deployment("a", reference))
    shifted = pre.transform(
        apply_shift(scored, spec), pre.measure_deployment("b", apply_shift(reference, spec))
    )
    np.testing.assert_allclose(shifted, original, atol=1e-4)
    # Without calibration the same rescaling moves the inputs a lot.
    uncalibrated = pre.transform(apply_shift(scored, spec))
    assert np.abs(uncalibrated - pre.transform(scored)).mean() > 0.05


def test_missing_values_give_no_evidence(small_training_frame: pd.DataFrame) -> None:
    pre = fitted(small_training_frame)
    assert pre.missing_values == "no_evidence"
    features = small_training_frame[list(KPI_FEATURES)]
    incidents = features.iloc[:3].fillna(features.median())  # fully observed, then gaps
    incidents.loc[incidents.index[0], list(pre.columns)] = np.nan
    incidents.loc[incidents.index[1], pre.columns[0]] = np.nan
    out = pre.transform(incidents)
    m, bins = len(pre.columns), pre.ple_bins
    assert (out[0] == 0).all()  # nothing known: an all-zero code
    therm = out[:, m:].reshape(3, m, bins)
    assert out[1, 0] == 0 and (therm[1, 0] == 0).all()
    assert (np.abs(therm[1, 1:]).sum(axis=1) > 0).all()  # the other KPIs as before
    # Every observed value has a unit away from the centre: the zero code is the missing one.
    assert (np.abs(therm[2]).max(axis=1) == 0.5).all()


def test_models_saved_before_the_setting_read_missing_values_as_the_median(
    small_training_frame: pd.DataFrame,
) -> None:
    pre = fitted(small_training_frame)
    payload = pre.to_dict()
    assert payload["missing_values"] == "no_evidence"
    del payload["missing_values"]
    older = KpiPreprocessor.from_dict(payload)
    assert older.missing_values == "median"
    out = older.transform(pd.DataFrame(np.nan, index=range(3), columns=list(KPI_FEATURES)))
    m, bins = len(older.columns), older.ple_bins
    assert np.allclose(out[:, :m], 0.0)  # the median's normal score
    therm = out[:, m:].reshape(3, m, bins)
    assert (therm[:, :, : bins // 2] == 0.5).all() and (therm[:, :, bins // 2 :] == -0.5).all()
    median = KpiPreprocessor.fit(
        small_training_frame[list(KPI_FEATURES)],
        small_training_frame["label"].to_numpy(),
        PreprocessingSettings(missing_values="median"),
        CONFIG_LIKE,
    )
    np.testing.assert_array_equal(
        median.transform(small_training_frame), older.transform(small_training_frame)
    )


def test_a_kpi_the_window_has_no_value_in_is_read_at_the_middle() -> None:
    rng = np.random.default_rng(3)
    window = rng.normal(size=(200, 2))
    window[:, 1] = np.nan  # the deployment does not record the second KPI
    stats = DeploymentStats.measure("gaps", window, ("feature1", "feature2"))
    scored = np.array([[-3.0, -5.0], [0.0, 0.0], [3.0, 7.0]])
    u = stats.positions(scored, missing=0.5)
    assert u[:, 1].tolist() == [0.5, 0.5, 0.5]  # not 0 and 1: nothing to compare with
    assert u[0, 0] < 0.01 and u[2, 0] > 0.99  # the measured KPI as before
    # A model whose missing values give no evidence reads the KPI as missing throughout.
    missing = stats.positions(scored, missing=np.nan)
    assert np.isnan(missing[:, 1]).all() and (missing[:, 0] == u[:, 0]).all()


def test_balanced_reference_weights_each_class_equally() -> None:
    labels = np.array([0] * 90 + [1] * 10)
    weights = class_balanced_weights(labels)
    assert np.isclose(weights[labels == 0].sum(), weights[labels == 1].sum())
    values = np.where(labels == 0, 0.0, 10.0).reshape(-1, 1)
    stats = DeploymentStats.measure("t", values, ("x",), weights)
    assert np.isclose(np.median(stats.quantiles), 5.0, atol=5.0)  # not dominated by class 0
    assert stats.positions(np.array([[10.0]]), missing=0.5)[0, 0] > 0.6


def test_stats_round_trip(small_training_frame: pd.DataFrame) -> None:
    pre = fitted(small_training_frame)
    again = KpiPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_array_equal(
        again.transform(small_training_frame), pre.transform(small_training_frame)
    )


def test_em_recovers_a_class_mix() -> None:
    rng = np.random.default_rng(0)
    true_mix = np.array([0.5, 0.3, 0.1, 0.05, 0.03, 0.02])
    labels = rng.choice(6, size=5000, p=true_mix)
    # Exact posteriors under a uniform prior of overlapping Gaussian classes x ~ N(2y, 1).
    x = rng.normal(2.0 * labels, 1.0)
    logits = -0.5 * (x[:, None] - 2.0 * np.arange(6)[None, :]) ** 2
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    estimate = estimate_class_mix(probabilities)
    assert np.abs(estimate - true_mix).max() < 0.05
    corrected = correct_probabilities(probabilities, estimate)
    assert np.allclose(corrected.sum(1), 1)
    assert (corrected.argmax(1) == labels).mean() > (probabilities.argmax(1) == labels).mean()


def test_em_reads_past_rows_without_evidence() -> None:
    """A row of NaN or of zeros says nothing about the mix; it must not make every share NaN."""
    probabilities = np.tile([0.6, 0.1, 0.1, 0.1, 0.05, 0.05], (20, 1))
    probabilities[0], probabilities[1] = np.nan, 0.0
    estimate = estimate_class_mix(probabilities)
    assert np.isfinite(estimate).all() and abs(estimate.sum() - 1.0) < 1e-9
    assert np.allclose(estimate_class_mix(probabilities[:2]), 1 / 6)  # none usable: the prior


def test_resample_class_mix_follows_the_mix() -> None:
    labels = np.repeat(np.arange(6), [500, 100, 100, 100, 100, 100])
    rows = resample_class_mix(labels, np.random.default_rng(0), np.full(6, 1 / 6))
    counts = np.bincount(labels[rows], minlength=6)
    assert counts.max() - counts.min() <= 0.3 * counts.mean()
    assert len(set(rows.tolist())) == len(rows)  # without replacement


def test_floor_keeps_every_class_possible() -> None:
    from systemhealer.deployments import floor_shares

    floored = floor_shares(np.array([0.0, 0.0, 0.35, 0.65, 0.0, 0.0]), 0.02)
    assert np.isclose(floored.sum(), 1) and floored.min() >= 0.018


def two_class_incidents(rng: np.random.Generator, counts: tuple[int, int]) -> pd.DataFrame:
    """One informative KPI: class 0 ~ N(0, 1), class 1 ~ N(3, 1); the rest noise."""
    labels = np.repeat([0, 1], counts)
    frame = pd.DataFrame(rng.normal(size=(len(labels), len(KPI_FEATURES))), columns=KPI_FEATURES)
    frame["feature2"] = rng.normal(3.0 * labels, 1.0)
    frame["label"] = labels
    return frame


def test_reading_a_window_at_its_class_mix_undoes_the_mix_shift() -> None:
    rng = np.random.default_rng(0)
    training = two_class_incidents(rng, (2000, 2000))
    pre = KpiPreprocessor.fit(
        training[list(KPI_FEATURES)],
        training["label"].to_numpy(),
        PreprocessingSettings(select_top_k=None),
    )
    column = pre.columns.index("feature2")
    # A deployment in other units (×1000) where 80 % of incidents are class 0.
    window = two_class_incidents(rng, (4000, 1000))
    window["feature2"] *= 1000.0
    stats = pre.measure_deployment("site", window)
    probe = pd.DataFrame(0.0, index=range(1), columns=list(KPI_FEATURES))
    probe["feature2"] = 1.5  # halfway between the classes, in training units
    expected = pre.training.positions(pre.raw_values(probe), missing=0.5)[0, column]
    assert abs(expected - 0.5) < 0.03
    probe["feature2"] *= 1000.0
    plain = stats.positions(pre.raw_values(probe), missing=0.5)[0, column]
    mixed = pre.for_class_mix(stats, np.array([0.8, 0.2, 0, 0, 0, 0]))
    read = mixed.positions(pre.raw_values(probe), missing=0.5)[0, column]
    assert abs(plain - expected) > 0.2  # a balanced reading puts it deep in class 1's range
    assert abs(read - expected) < 0.03
    np.testing.assert_allclose(mixed.reference_mix, [0.8, 0.2, 0, 0, 0, 0])
    # Classes absent from training take no share; a balanced reading changes nothing much.
    assert np.isnan(pre.class_cdfs[2:]).all()
    balanced = pre.for_class_mix(stats, np.full(6, 1 / 6))
    np.testing.assert_allclose(balanced.reference_mix, [0.5, 0.5, 0, 0, 0, 0])
    grid = balanced.positions(pre.raw_values(window), missing=0.5)
    assert np.abs(grid - stats.positions(pre.raw_values(window), missing=0.5)).max() < 0.03
    again = KpiPreprocessor.from_dict(pre.to_dict())
    np.testing.assert_allclose(again.class_cdfs, pre.class_cdfs, atol=1e-6, equal_nan=True)


def test_mix_from_response_recovers_a_class_mix() -> None:
    from systemhealer.label_shift import mix_from_response

    rng = np.random.default_rng(1)
    response = rng.dirichlet(np.ones(6), size=6).T * 0.4 + np.eye(6) * 0.6  # columns sum to 1
    response[:, 5] = np.nan  # a class absent from training
    true_mix = np.array([0.5, 0.2, 0.1, 0.1, 0.1, 0.0])
    mean = np.nan_to_num(response) @ true_mix
    np.testing.assert_allclose(mix_from_response(mean, response), true_mix, atol=1e-6)


INFORMATIVE = ("feature2", "feature3", "feature4")


def three_kpi_incidents(rng: np.random.Generator, counts: tuple[int, int]) -> pd.DataFrame:
    """Three informative KPIs, independent given the class: N(0, 1) for class 0, N(2, 1) for
    class 1. (With one KPI the mix could not be told from a monotone change of units.)"""
    labels = np.repeat([0, 1], counts)
    frame = pd.DataFrame(rng.normal(size=(len(labels), len(KPI_FEATURES))), columns=KPI_FEATURES)
    for column in INFORMATIVE:
        frame[column] = rng.normal(2.0 * labels, 1.0)
    frame["label"] = labels
    return frame


class ExactTwoClassModel:
    """Bayes posteriors (equal priors) of the data above, read from positions: what
    ``read_at_class_mix`` needs of a model, with no training noise in the way."""

    def __init__(self, pre: KpiPreprocessor, training: pd.DataFrame) -> None:
        from systemhealer.label_shift import class_response

        self.preprocessor = pre
        self.columns = [pre.columns.index(c) for c in INFORMATIVE]
        self.class_response: np.ndarray | None = None
        self.class_response = class_response(
            self.probabilities(training), training["label"].to_numpy()
        )

    def probabilities(
        self, features: pd.DataFrame, deployment: DeploymentStats | None = None
    ) -> np.ndarray:
        stats = self.preprocessor.statistics(deployment)
        u = stats.positions(self.preprocessor.raw_values(features), missing=0.5)
        grid = self.preprocessor.training
        log_odds = np.zeros(len(features))
        for j in self.columns:  # back to training units, then N(2, 1) against N(0, 1)
            x = np.interp(u[:, j], grid.probs, grid.quantiles[:, j])
            log_odds += 2.0 * x - 2.0
        out = np.zeros((len(features), 6))
        out[:, 1] = 1 / (1 + np.exp(-log_odds))
        out[:, 0] = 1 - out[:, 1]
        return out


def test_the_class_mix_estimate_settles_near_the_truth() -> None:
    from systemhealer.diagnoser import read_at_class_mix

    rng = np.random.default_rng(2)
    training = three_kpi_incidents(rng, (3000, 3000))
    pre = KpiPreprocessor.fit(
        training[list(KPI_FEATURES)],
        training["label"].to_numpy(),
        PreprocessingSettings(select_top_k=None),
    )
    model = ExactTwoClassModel(pre, training)
    for counts in ((1500, 1500), (2700, 300), (600, 2400)):
        window = three_kpi_incidents(rng, counts)
        for column in INFORMATIVE:  # other units and offsets
            window[column] = window[column] * 1000.0 + 7.0
        mix = read_at_class_mix(model, "site", window).reference_mix
        truth = np.array(counts) / sum(counts)
        assert np.abs(mix[:2] - truth).max() < 0.06, (counts, mix)
        assert mix[2:].sum() == 0  # classes absent from training take no share


def test_a_balanced_reading_changes_the_training_statistics_very_little(
    small_training_frame: pd.DataFrame,
) -> None:
    pre = fitted(small_training_frame)
    values = pre.raw_values(small_training_frame)
    balanced = pre.for_class_mix(pre.training, np.full(6, 1 / 6))
    assert (
        np.abs(
            balanced.positions(values, missing=0.5) - pre.training.positions(values, missing=0.5)
        ).max()
        < 0.01
    )
    assert (np.diff(balanced.quantiles, axis=0) >= 0).all()
