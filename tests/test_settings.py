"""Settings from the wire: camelCase in, defaults kept for bad values, problems reported."""

from dlm_lsp.settings import Settings, parse_settings, settings_to_wire


def test_camel_case_under_dlm_key():
    settings, problems = parse_settings(
        {"dlm": {"maxSteps": 8, "threshold": 0.8, "languages": {"go": False}}})
    assert problems == []
    assert settings.max_steps == 8 and settings.threshold == 0.8
    assert not settings.language_enabled("go") and settings.language_enabled("python")


def test_bad_values_fall_back_and_are_reported():
    base = Settings(threshold=0.7)
    settings, problems = parse_settings(
        {"threshold": 7, "maxSteps": "many", "strategy": "beam", "bogus": 1}, base)
    assert settings == base
    assert len(problems) == 4
    assert any("bogus" in p for p in problems)


def test_not_an_object():
    settings, problems = parse_settings([1, 2])
    assert settings == Settings() and problems


def test_round_trip_to_wire():
    wire = settings_to_wire(Settings(max_steps=4))
    again, problems = parse_settings(wire)
    assert problems == [] and again == Settings(max_steps=4)


def test_disable_all():
    settings, _ = parse_settings({"enable": False})
    assert not settings.language_enabled("python")


def test_null_model_dir_keeps_the_model_the_server_started_with():
    settings, problems = parse_settings({"modelDir": None}, Settings(model_dir="/models/x"))
    assert problems == [] and settings.model_dir == "/models/x"
