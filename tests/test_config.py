"""Config validation: field-path errors, presets by name, overrides, --steps."""
from __future__ import annotations

import pytest

import colsim.models  # noqa: F401
import colsim.protocols  # noqa: F401
import colsim.rules  # noqa: F401
from colsim.config import ConfigError, apply_override, load_yaml_text, resolve_run_config


def _proto(tmp_path, text: str):
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


BASE = """
name: t
world: {name: affine_digits, image_size: 16}
phases:
  - {name: a, steps: 10, classes: [0, 1]}
  - {name: b, steps: 10}
  - {name: c, steps: 30}
"""


def test_presets_resolve():
    cfg = resolve_run_config("nonstationary", rule="lpl")
    assert cfg.rule.name == "lpl"
    assert cfg.rule.optimizer.name == "adam" and cfg.rule.optimizer.lr == 3e-3
    assert cfg.rule.optimizer.groups["*"].lr == 4e-4 and cfg.rule.optimizer.groups["*"].warmup_steps == 20
    assert cfg.rule.optimizer.weight_decay == 1.5e-6
    assert cfg.model.encoder.kind == "cnn"
    assert [p.classes for p in cfg.protocol.phases] == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    cfg = resolve_run_config("protocols/stationary.yaml", rule="backprop", model="seqjepa_resnet18")
    assert cfg.model.encoder.kind == "resnet18" and cfg.rule.optimizer.name == "adamw"
    assert cfg.rule.optimizer.lr == 4e-4 and cfg.rule.optimizer.weight_decay == 1e-3


def test_field_path_for_bad_steps(tmp_path):
    p = _proto(tmp_path, BASE.replace("steps: 30", "steps: -3"))
    with pytest.raises(ConfigError, match=r"^protocol\.phases\[2\]\.steps: must be > 0$"):
        resolve_run_config(p)


def test_unknown_key_names_path(tmp_path):
    p = _proto(tmp_path, BASE + "stream: {batch: 4, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"protocol\.stream\.bogus: unknown key"):
        resolve_run_config(p)


def test_wrong_type(tmp_path):
    p = _proto(tmp_path, BASE + "stream: {batch: lots}\n")
    with pytest.raises(ConfigError, match=r"protocol\.stream\.batch: "):
        resolve_run_config(p)


def test_malformed_and_non_mapping():
    with pytest.raises(ConfigError, match="malformed YAML"):
        load_yaml_text("a: [1, 2\nb: 3", "x.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml_text("- 1\n- 2\n", "x.yaml")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml_text("", "x.yaml")


def test_unknown_names_list_valid_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown rule 'nope'; valid: .*backprop.*lpl"):
        resolve_run_config("nonstationary", rule="nope")
    with pytest.raises(ConfigError, match=r"unknown model preset 'nope'; valid: .*seqjepa_cnn"):
        resolve_run_config("nonstationary", model="nope")
    p = _proto(tmp_path, BASE.replace("affine_digits", "mars"))
    with pytest.raises(ConfigError, match=r"unknown world 'mars'; valid: affine_digits"):
        resolve_run_config(p)
    with pytest.raises(ConfigError, match="file not found"):
        resolve_run_config(tmp_path / "missing.yaml")


def test_overrides_validated_the_same_way():
    cfg = resolve_run_config("nonstationary", overrides=["rule.optimizer.lr=0.01", "protocol.phases[1].steps=7",
                                                         "model.window=4"])
    assert cfg.rule.optimizer.lr == 0.01 and cfg.protocol.phases[1].steps == 7 and cfg.model.window == 4
    with pytest.raises(ConfigError, match=r"^rule\.optimizer\.lr: must be > 0"):
        resolve_run_config("nonstationary", overrides=["rule.optimizer.lr=-1"])
    with pytest.raises(ConfigError, match=r"^model\.windw: unknown key"):
        resolve_run_config("nonstationary", overrides=["model.windw=4"])
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        apply_override({}, "novalue")
    with pytest.raises(ConfigError, match="must start with one of"):
        apply_override({}, "foo.bar=1")


def test_steps_keep_proportions(tmp_path):
    cfg = resolve_run_config(_proto(tmp_path, BASE), steps=25)
    assert [p.steps for p in cfg.protocol.phases] == [5, 5, 15]
    with pytest.raises(ConfigError, match="--steps"):
        resolve_run_config(_proto(tmp_path, BASE), steps=2)


def test_rule_composition_spec():
    cfg = resolve_run_config("nonstationary", rule="lpl")
    assert cfg.rule.wrap == []
    with pytest.raises(ConfigError, match="empty part"):
        resolve_run_config("nonstationary", rule="lpl+")


# --------------------------------------------------------------------------- preset inheritance

def _preset_pkg(tmp_path, monkeypatch, files: dict[str, str]) -> None:
    """A throwaway package of model presets standing in for colsim.models."""
    import importlib

    from colsim import registry

    pkg = tmp_path / f"fake_model_presets_{tmp_path.name}"  # a fresh name: imports are cached per name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in files.items():
        (pkg / f"{name}.yaml").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setitem(registry.PACKAGES, "models", pkg.name)


def test_extends_merges_mappings_replaces_lists_and_sections_of_another_kind(tmp_path, monkeypatch):
    from colsim import registry

    _preset_pkg(tmp_path, monkeypatch, {
        "base": "name: seqjepa\nwindow: 3\naggregator: {kind: transformer, layers: 2, dropout: 0.1}\n"
                "regularizers: [{name: a}, {name: b}]\n",
        "deeper": "extends: base\naggregator: {layers: 4}\nregularizers: [{name: c}]\n",
        "child": "extends: base\naggregator: {kind: tost, layers: 1}\n",
        "grandchild": "extends: child\nwindow: 5\n",
    })
    # a mapping merges key by key; a list replaces the base's whole
    assert registry.preset("models", "deeper") == {
        "name": "seqjepa", "window": 3, "aggregator": {"kind": "transformer", "layers": 4, "dropout": 0.1},
        "regularizers": [{"name": "c"}]}
    # a section whose kind changes replaces the base's section whole: no transformer dropout on a tost
    assert registry.preset("models", "child") == {"name": "seqjepa", "window": 3, "regularizers": [{"name": "a"}, {"name": "b"}],
                                                  "aggregator": {"kind": "tost", "layers": 1}}
    assert registry.preset("models", "grandchild") == {"name": "seqjepa", "window": 5, "regularizers": [{"name": "a"}, {"name": "b"}],
                                                       "aggregator": {"kind": "tost", "layers": 1}}
    assert registry.preset("models", "base")["aggregator"]["dropout"] == 0.1  # the base is not modified


def test_a_protocol_file_extends_by_name_and_by_path(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "base.yaml").write_text("extends: nonstationary\nstream: {batch: 4}\n")
    (tmp_path / "mine.yaml").write_text("extends: sub/base.yaml\nname: mine\n"
                                        "phases: [{name: only, steps: 3, classes: [0, 1]}]\n")
    cfg = resolve_run_config(tmp_path / "mine.yaml")
    ref = resolve_run_config("nonstationary")
    assert cfg.protocol.name == "mine" and cfg.protocol.stream.batch == 4
    assert cfg.protocol.stream.episode_length == ref.protocol.stream.episode_length == 8  # merged, not replaced
    assert [p.steps for p in cfg.protocol.phases] == [3]
    assert cfg.protocol.world == ref.protocol.world and cfg.rule == ref.rule
    assert "extends" not in cfg.to_dict()["protocol"]  # the resolved config.yaml stays flat
    (tmp_path / "loop.yaml").write_text("extends: ./loop.yaml\n")
    with pytest.raises(ConfigError, match=r"loop\.yaml: extends: cycle .*loop\.yaml -> .*loop\.yaml; remove one extends"):
        resolve_run_config(tmp_path / "loop.yaml")
    (tmp_path / "bad.yaml").write_text("extends: nowhere/x.yaml\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: extends: .*nowhere/x\.yaml is not a file"):
        resolve_run_config(tmp_path / "bad.yaml")


def test_packaged_presets_that_extend_resolve_to_their_base_plus_their_own_keys():
    from importlib import resources

    from colsim import registry
    from colsim.presets import deep_merge

    base = registry.preset("models", "seqjepa_cnn")
    for name in ("seqjepa_cnn_cr", "seqjepa_cnn_bn", "seqjepa_crate", "seqjepa_crate_alpha", "seqjepa_tost"):
        own = load_yaml_text((resources.files("colsim.models") / f"{name}.yaml").read_text(), name)
        assert own.pop("extends") == "seqjepa_cnn"
        assert registry.preset("models", name) == deep_merge(base, own)
