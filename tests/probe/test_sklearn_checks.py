"""scikit-learn's estimator checks over every registered probe kind (``parametrize_with_checks``).

Two kinds cannot take sklearn's generic data, and their expected failures are listed with the reason:
CCS is fitted on contrast pairs (``groups``) that the generic checks do not pass, and the conditional
probe reads ``[prompt | response]`` side by side, so its features must have an even width. Any other
failure, or one of these checks starting to pass, fails the test (sklearn's strict mode for xfails).
"""

from __future__ import annotations

from sklearn.utils.estimator_checks import parametrize_with_checks

from probe.probes import PROBES, make_probe

CCS_REASON = "CCS is fitted on contrast pairs (fit(groups=...)), which the generic checks do not pass"
CONDITIONAL_REASON = "the conditional probe needs [prompt | response] features of even width"
EXPECTED = {
    "CCSProbe": dict.fromkeys(
        [
            "check_classifier_data_not_an_array",
            "check_classifiers_classes",
            "check_classifiers_train",
            "check_decision_proba_consistency",
            "check_dict_unchanged",
            "check_dont_overwrite_parameters",
            "check_dtype_object",
            "check_estimators_dtypes",
            "check_estimators_fit_returns_self",
            "check_estimators_nan_inf",
            "check_estimators_overwrite_params",
            "check_estimators_pickle",
            "check_f_contiguous_array_estimator",
            "check_fit2d_1feature",
            "check_fit2d_predict1d",
            "check_fit_check_is_fitted",
            "check_fit_idempotent",
            "check_fit_score_takes_y",
            "check_methods_sample_order_invariance",
            "check_methods_subset_invariance",
            "check_n_features_in",
            "check_n_features_in_after_fitting",
            "check_pipeline_consistency",
            "check_positive_only_tag_during_fit",
            "check_readonly_memmap_input",
            "check_supervised_y_2d",
        ],
        CCS_REASON,
    ),
    "ConditionalProbe": dict.fromkeys(
        [
            "check_dict_unchanged",
            "check_dont_overwrite_parameters",
            "check_estimators_dtypes",
            "check_estimators_nan_inf",
            "check_estimators_pickle",
            "check_f_contiguous_array_estimator",
            "check_fit2d_1feature",
            "check_fit2d_predict1d",
            "check_fit_score_takes_y",
            "check_methods_sample_order_invariance",
            "check_methods_subset_invariance",
            "check_non_transformer_estimators_n_iter",
            "check_pipeline_consistency",
            "check_supervised_y_2d",
        ],
        CONDITIONAL_REASON,
    ),
}


def _expected(estimator) -> dict[str, str]:
    return EXPECTED.get(type(estimator).__name__, {})


@parametrize_with_checks([make_probe(name) for name in sorted(PROBES)], expected_failed_checks=_expected, xfail_strict=True)
def test_probe_kinds_follow_sklearn_conventions(estimator, check):
    check(estimator)


def test_the_light_name_list_matches_the_registry():
    from probe.probe_names import BUILTIN_PROBES

    assert tuple(sorted(PROBES)) == BUILTIN_PROBES
