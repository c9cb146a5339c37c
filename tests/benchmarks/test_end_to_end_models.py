"""`benchmarks/end_to_end.py --models` speaks both vocabularies: its own case names and the CLI's model names."""

import pytest

from benchmarks import end_to_end


@pytest.mark.parametrize("given, case", [("minilm-l6", "minilm-8x64"), ("fashion-cnn", "cnn"),
                                         *((name, name) for name in end_to_end.MODELS)])
def test_models_accepts_the_cli_names_and_its_own(given, case):
    assert end_to_end._model_name(given) == case


def test_an_unknown_model_is_an_error_listing_both_sets_of_names(capsys):
    with pytest.raises(SystemExit) as exit_info:
        end_to_end.main(["--models", "resnet-50"])  # argparse stops before any model is built
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert "unknown model 'resnet-50'" in message
    for name in (*end_to_end.MODELS, *end_to_end.ALIASES):
        assert name in message
