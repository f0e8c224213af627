"""expect: blocks — parsing (validated with the config) and evaluation against a summary."""

import pytest

from gradlab.analyse.expect import MISSING, check, lookup
from gradlab.config import ConfigError, config_from_dict

SUMMARY = {
    "status": "completed",
    "grad_ratio_init": 1e-9,
    "final_metrics": {"test_accuracy": 0.93},
    "first_nonfinite": None,
}


def test_literal_and_ranges_hold_or_fail_with_the_measured_value():
    results = check({
        "status": "completed",
        "grad_ratio_init": {"max": 1e-6},
        "final_metrics.test_accuracy": {"min": 0.9, "max": 0.99},
        "first_nonfinite": None,
    }, SUMMARY)
    assert [r.ok for r in results] == [True, True, True, True]

    failed = check({"status": "diverged", "final_metrics.test_accuracy": {"min": 0.95}}, SUMMARY)
    assert [r.ok for r in failed] == [False, False]
    assert failed[0].describe() == "status: expected diverged, measured completed"
    assert failed[1].describe() == "final_metrics.test_accuracy: expected ≥ 0.95, measured 0.93"


def test_missing_values_and_non_numbers_fail_a_range():
    assert not check({"final_metrics.test_loss": {"max": 1}}, SUMMARY)[0].ok
    assert "measured missing" in check({"final_metrics.test_loss": {"max": 1}}, SUMMARY)[0].describe()
    assert not check({"status": {"min": 0}}, SUMMARY)[0].ok
    assert not check({"first_nonfinite": {"max": 1}}, SUMMARY)[0].ok
    assert all(not r.ok for r in check({"status": "completed"}, None))


def test_lookup_follows_dots_into_dicts_and_lists():
    summary = {"layers": [{"name": "fc1", "init": {"grad_norm": 0.5}}]}
    assert lookup(summary, "layers.0.init.grad_norm") == 0.5
    assert lookup(summary, "layers.3.name") is MISSING  # a marker, not an error
    assert lookup(summary, "layers.0.nope") is MISSING
    assert lookup(summary, "layers.x.name") is MISSING
    assert not check({"layers.3.name": "fc1"}, summary)[0].ok


@pytest.mark.parametrize("expect, fragment", [
    ({"grad_ratio_innit": {"max": 1}}, "expect.grad_ratio_innit: not a summary.json field "
                                       "(did you mean 'grad_ratio_init'?)"),
    ({"status": {"mn": 3}}, "expect.status: a range is {min: x}, {max: y} or both"),
    ({"final_loss": {"min": 2, "max": 1}}, "expect.final_loss: min must be ≤ max"),
    ({"final_loss": {"max": "small"}}, "expect.final_loss: range bounds must be numbers"),
    ({"final_loss": [1, 2]}, "expect.final_loss: must be a literal or a {min, max} range"),
])
def test_bad_expect_blocks_are_config_errors(expect, fragment):
    with pytest.raises(ConfigError) as err:
        config_from_dict({"name": "x", "data": {"kind": "teacher"}, "expect": expect}, "x.yaml")
    assert fragment in str(err.value)
    assert str(err.value).startswith("x.yaml: ")
