"""PassReport: counts, the summary line, logging of kept-exact ops, and the JSON form."""

import json
import logging

from relay_passes.report import KeptExact, PassReport, Replaced


def _report():
    report = PassReport("LUTNonlinear")
    report.replaced += [
        Replaced("gelu", "erf-decomposed", (2, 8), "float32", "lut_gelu"),
        Replaced("gelu", "R.nn.gelu", (2, 8), "float32", "lut_gelu"),
        Replaced("softmax", "R.nn.softmax", (2, 4), "float32", "lut_softmax"),
    ]
    report.kept.append(KeptExact("layer_norm", "R.nn.layer_norm", None, "float32", "dynamic shape"))
    return report


def test_counts_and_summary():
    report = _report()
    assert report.counts() == {"gelu": 2, "softmax": 1}
    assert report.kept_counts() == {"layer_norm": 1}
    assert report.summary() == "LUTNonlinear: replaced 2 gelu, 1 softmax; kept exact 1 layer_norm"
    text = str(report)
    assert "kept exact layer_norm (R.nn.layer_norm) (dynamic) float32: dynamic shape" in text
    assert "replaced gelu (erf-decomposed) 2x8 float32 -> lut_gelu" in text


def test_empty_report_says_nothing_was_replaced():
    assert PassReport("LUTDense").summary() == "LUTDense: replaced nothing"


def test_log_warns_for_every_kept_op(caplog):
    logger = logging.getLogger("test_report")
    with caplog.at_level(logging.INFO, logger="test_report"):
        _report().log(logger)
    levels = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert levels[0] == (logging.INFO, "LUTNonlinear: replaced 2 gelu, 1 softmax; kept exact 1 layer_norm")
    assert levels[1][0] == logging.WARNING and "dynamic shape" in levels[1][1]


def test_to_dict_is_json_ready():
    data = json.loads(json.dumps(_report().to_dict()))
    assert data["pass"] == "LUTNonlinear"
    assert data["replaced"][0] == {
        "op": "gelu", "form": "erf-decomposed", "shape": [2, 8], "dtype": "float32", "function": "lut_gelu",
        "entry": None,
    }
    assert data["unused"] == []
    assert data["kept"][0]["reason"] == "dynamic shape"
