"""Network configuration, presets and overrides (deconvnet.config).

Oracles: the paper / 2010 toolbox values written out by hand (9/45/150 maps, 7x7, full /
singles+pairs / random-pairs, p 0.8/0.8/1, continuation 1 -> 1e5), JSON round trips through
the standard json module, and hand-written expectations for each rejected field.
"""

from __future__ import annotations

import json
import re
from dataclasses import FrozenInstanceError, replace

import pytest

from deconvnet.config import (
    ConfigError,
    LayerConfig,
    NetConfig,
    apply_overrides,
    load_config,
    preset,
)


def one_layer(**kw) -> NetConfig:
    return NetConfig(layers=(LayerConfig(n_maps=4, **kw),))


# ------------------------------------------------------------------ presets
def test_zeiler2010_preset_matches_the_paper():
    cfg = preset("zeiler2010", 3)
    expected = [(9, "full", 0.8), (45, "singles+pairs", 0.8), (150, "random-pairs", 1.0)]
    assert len(cfg.layers) == 3
    for layer, (K, conn, p) in zip(cfg.layers, expected):
        assert (layer.n_maps, layer.filter_size, layer.connectivity) == (K, 7, conn)
        assert layer.lam == 1.0 and layer.p == p
        assert layer.method == "continuation"
        assert (layer.beta0, layer.beta_inc, layer.n_beta, layer.n_cg) == (1.0, 10.0, 6, 2)
        assert layer.beta0 * layer.beta_inc ** (layer.n_beta - 1) == pytest.approx(1e5)
        assert (layer.batch_size, layer.n_epochs) == (1, 5)
    assert cfg.color == "gray" and cfg.preprocess == "toolbox2010" and cfg.boundary == "valid"
    assert cfg.rescale is True and cfg.chain is True


@pytest.mark.parametrize("n", [1, 2])
def test_zeiler2010_preset_truncates(n):
    cfg = preset("zeiler2010", n)
    assert [lc.n_maps for lc in cfg.layers] == [9, 45][:n]


def test_zeiler2010_fourth_layer():
    l4 = preset("zeiler2010", 4).layers[3]
    assert (l4.n_maps, l4.filter_size, l4.connectivity, l4.p) == (150, 9, "random-pairs", 1.0)


def test_fast_preset_same_network_other_solver():
    cfg = preset("fast", 3)
    assert [lc.n_maps for lc in cfg.layers] == [9, 45, 150]
    assert [lc.connectivity for lc in cfg.layers] == ["full", "singles+pairs", "random-pairs"]
    for lc in cfg.layers:
        assert lc.method == "fista" and lc.batch_size > 1


@pytest.mark.parametrize("name,n,match", [
    ("nope", 2, "preset='nope' is not allowed: one of calibrated, zeiler2010, fista, fast, denoise"),
    ("zeiler2010", 0, "layers=0 is not allowed: an integer >= 1"),
], ids=["nope-2", "zeiler2010-0"])
def test_bad_preset_raises(name, n, match):
    with pytest.raises(ConfigError, match=f"^{re.escape(match)}$"):
        preset(name, n)


# ---------------------------------------------------------------- validation
def test_config_error_is_value_error_and_message_names_field():
    with pytest.raises(ConfigError) as info:
        LayerConfig(n_maps=9, lam=-1.0)
    assert isinstance(info.value, ValueError)
    assert str(info.value) == "layer.lam=-1.0 is not allowed: a number > 0"
    # built as part of a network (JSON, overrides), the message names the layer
    with pytest.raises(ConfigError) as info:
        NetConfig.from_dict({"layers": [{"n_maps": 9}, {"n_maps": 4, "lam": -1.0}]})
    assert str(info.value) == "layer2.lam=-1.0 is not allowed: a number > 0"
    with pytest.raises(ConfigError) as info:
        apply_overrides(preset("zeiler2010", 2), ["layer2.lam=-1"])
    assert str(info.value) == "layer2.lam=-1.0 is not allowed: a number > 0"


@pytest.mark.parametrize("field,value", [
    ("n_maps", 0), ("n_maps", 2.5), ("n_maps", True), ("filter_size", 0), ("connectivity", "foo"),
    ("lam", 0.0), ("lam", -1.0), ("lam", float("nan")), ("lam", float("inf")), ("lam", "1"),
    ("p", 0.0), ("p", 1.5), ("p", -0.5), ("method", "foo"), ("n_epochs", 0), ("batch_size", 0),
    ("filter_method", "newton"), ("filter_iters", 0), ("max_iter", 0), ("tol", -1.0), ("beta0", 0.0),
    ("beta_inc", 1.0), ("beta_inc", 0.5), ("n_beta", 0), ("n_cg", 0),
])
def test_bad_layer_field_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^layer\.{field}="):
        replace(LayerConfig(n_maps=4), **{field: value})
    bad = dict(LayerConfig(n_maps=4).__dict__, **{field: value})
    with pytest.raises(ConfigError, match=rf"^layer2\.{field}="):
        NetConfig.from_dict({"layers": [{"n_maps": 4}, bad]})


@pytest.mark.parametrize("field,value", [
    ("color", "cmyk"), ("preprocess", "foo"), ("max_side", 4), ("max_side", 100.5), ("rescale", "yes"),
    ("chain", 1), ("boundary", "same"), ("seed", -1), ("dtype", "float16"),
])
def test_bad_net_field_names_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        replace(one_layer(), **{field: value})


def test_empty_layers_rejected():
    with pytest.raises(ConfigError, match=r"^layers=\[\] is not allowed: at least one layer$"):
        NetConfig(layers=())


def test_valid_edge_values_accepted():
    NetConfig(layers=(LayerConfig(n_maps=1, p=1.0, lam=1e-6, filter_size=1),), max_side=None)
    NetConfig(layers=(LayerConfig(n_maps=1, method="admm"),), boundary="circular")


def test_layer_to_layer_fit_is_checked():
    with pytest.raises(ConfigError, match=r"layer2\.n_maps"):
        NetConfig(layers=(LayerConfig(9), LayerConfig(44, connectivity="singles+pairs")))
    with pytest.raises(ConfigError, match=r"layer2\.n_maps"):
        NetConfig(layers=(LayerConfig(9), LayerConfig(8, connectivity="singles")))
    with pytest.raises(ConfigError, match=r"layer1\.connectivity"):
        NetConfig(layers=(LayerConfig(3, connectivity="random-pairs"),))  # one grey channel: no pair
    with pytest.raises(ConfigError, match=r"layer1\.method"):
        NetConfig(layers=(LayerConfig(3, method="admm"),), boundary="valid")
    # rgb: 3 channels below layer 1
    NetConfig(layers=(LayerConfig(3, connectivity="singles"),), color="rgb")
    NetConfig(layers=(LayerConfig(6, connectivity="singles+pairs"),), color="rgb")


def test_configs_are_frozen():
    cfg = preset("zeiler2010", 1)
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'seed'"):
        cfg.seed = 3
    with pytest.raises(FrozenInstanceError, match="cannot assign to field 'lam'"):
        cfg.layers[0].lam = 3.0


# ----------------------------------------------------------- dict and JSON
@pytest.mark.parametrize("cfg", [
    preset("zeiler2010", 3),
    preset("fast", 2),
    NetConfig(layers=(LayerConfig(3, filter_size=5, lam=2.5, p=0.5),), color="rgb", preprocess="lcn2011",
              max_side=None, rescale=False, chain=False, boundary="circular", seed=11, dtype="float64"),
])
def test_dict_and_json_round_trip(cfg):
    d = cfg.to_dict()
    assert isinstance(d["layers"], list) and all(isinstance(x, dict) for x in d["layers"])
    assert NetConfig.from_dict(d) == cfg
    text = cfg.to_json()
    assert NetConfig.from_dict(json.loads(text)) == cfg
    assert json.loads(text) == json.loads(json.dumps(d))  # plain JSON types only


def test_integers_from_json_become_floats():
    d = preset("zeiler2010", 1).to_dict()
    d["layers"][0].update(lam=2, p=1, tol=1, beta0=1, beta_inc=10)
    layer = NetConfig.from_dict(json.loads(json.dumps(d))).layers[0]
    for name in ("lam", "p", "tol", "beta0", "beta_inc"):
        assert type(getattr(layer, name)) is float
    assert layer.lam == 2.0


@pytest.mark.parametrize("edit,match", [
    (lambda d: d.update(colour="rgb"), "colour"),
    (lambda d: d["layers"][0].update(lamda=1.0), "lamda"),
    (lambda d: d["layers"][0].pop("n_maps"), "n_maps"),
    (lambda d: d.pop("layers"), "layers"),
    (lambda d: d.update(layers={"n_maps": 3}), "layers"),
    (lambda d: d.update(layers=[3]), "layer1"),
    (lambda d: d.update(layers=[]), "layers"),
    (lambda d: d["layers"][0].update(lam="big"), "lam"),
])
def test_from_dict_rejects_bad_documents(edit, match):
    d = preset("zeiler2010", 1).to_dict()
    edit(d)
    with pytest.raises(ConfigError, match=match):
        NetConfig.from_dict(d)


@pytest.mark.parametrize("field", ["lam", "p", "tol", "beta0", "beta_inc"])
def test_integers_too_large_for_a_float_are_config_errors(field):
    """JSON may hold an integer of any size; float() of it overflows. The message shortens it."""
    with pytest.raises(ConfigError, match=rf"^layer1\.{field}=1000.*\.\.\..*000 is not allowed: a finite number$"):
        NetConfig.from_dict({"layers": [{"n_maps": 3, field: 10 ** 400}]})


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(preset("fast", 2).to_json())
    assert load_config(path) == preset("fast", 2)
    for content, match in [(b'{"layers": 3}', "'layers'"), (b"{", "not valid JSON"), (b"\xff", "not UTF-8"),
                           (b'{"layers": [{"n_maps": 1' + b"0" * 5000 + b"}]}", "not valid JSON")]:
        path.write_bytes(content)
        with pytest.raises(ConfigError, match=match) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


@pytest.mark.parametrize("doc", [[1, 2], "text", 3, None])
def test_from_dict_rejects_non_objects(doc):
    with pytest.raises(ConfigError, match=f"^a configuration must be a JSON object, got {type(doc).__name__}$"):
        NetConfig.from_dict(doc)


# -------------------------------------------------------------- overrides
def test_overrides_set_every_layer_one_layer_and_net_fields():
    base = preset("zeiler2010", 3)
    cfg = apply_overrides(base, ["lam=2", "layer2.p=1", "color=rgb", "max_side=none", "rescale=false",
                                 "seed=4", "layer3.n_maps=10", "n_epochs=1"])
    assert [lc.lam for lc in cfg.layers] == [2.0, 2.0, 2.0]
    assert [lc.p for lc in cfg.layers] == [0.8, 1.0, 1.0]
    assert [lc.n_maps for lc in cfg.layers] == [9, 45, 10]
    assert [lc.n_epochs for lc in cfg.layers] == [1, 1, 1]
    assert (cfg.color, cfg.max_side, cfg.rescale, cfg.seed) == ("rgb", None, False, 4)
    assert base == preset("zeiler2010", 3)  # the original is untouched


def test_overrides_accept_a_dict_and_keep_types():
    cfg = apply_overrides(preset("zeiler2010", 2), {"tol": "1e-3", "max_side": "128", "chain": "off"})
    assert cfg.layers[0].tol == 1e-3 and type(cfg.layers[0].tol) is float
    assert cfg.max_side == 128 and type(cfg.max_side) is int
    assert cfg.chain is False


def test_overrides_can_change_linked_sizes_together():
    cfg = apply_overrides(preset("zeiler2010", 2), ["layer1.n_maps=3", "layer2.n_maps=6"])
    assert [lc.n_maps for lc in cfg.layers] == [3, 6]


@pytest.mark.parametrize("item,match", [
    ("lam=-1", r"layer1\.lam"),
    ("lam=abc", "lam"),
    ("lam=nan", "lam"),
    ("p=2", r"layer1\.p"),
    ("layer2.p=1.5", r"layer2\.p"),
    ("method=foo", r"layer1\.method"),
    ("connectivity=foo", r"layer1\.connectivity"),
    ("n_epochs=1.5", "n_epochs"),
    ("layer0.lam=1", "layer0"),
    ("layer4.lam=1", "layer4"),
    ("layerx.lam=1", "layerx"),
    ("layer1.foo=1", "foo"),
    ("foo=1", "foo"),
    ("lam", "KEY=VALUE"),
    ("rescale=maybe", "rescale"),
    ("seed=true", "seed"),
    ("n_maps=3", r"layer2\.n_maps"),  # layer 2 (singles+pairs) would need 6 maps
])
def test_bad_overrides_raise_config_error(item, match):
    with pytest.raises(ConfigError, match=match):
        apply_overrides(preset("zeiler2010", 3), [item])


@pytest.mark.parametrize("kw,match", [
    ({"n_maps": 0}, "layer.n_maps=0 is not allowed: an integer >= 1"),
    ({"n_maps": 4, "lam": -1.0}, "layer.lam=-1.0 is not allowed: a number > 0"),
    ({"n_maps": 4, "p": 2.0}, "layer.p=2.0 is not allowed: a number in (0, 1]"),
], ids=["n_maps-0", "lam-negative", "p-2"])
def test_layer_config_is_validated_on_construction(kw, match):
    """The module docstring says both dataclasses are validated on construction."""
    with pytest.raises(ConfigError, match=f"^{re.escape(match)}$"):
        LayerConfig(**kw)


def test_scaling_field_override_and_validation():
    cfg = apply_overrides(preset("zeiler2010", 2), ["scaling=std"])
    assert cfg.scaling == "std" and preset("zeiler2010", 2).scaling == "minmax"
    assert preset("fast", 2).scaling == "std"
    with pytest.raises(ConfigError, match=r"^scaling='unit' is not allowed"):
        apply_overrides(cfg, ["scaling=unit"])


def test_denoise_preset_is_a_larger_calibrated_layer_1_and_one_layer_by_default():
    from deconvnet.config import DENOISE_CROP, DENOISE_LAYER1

    cfg = preset("denoise")
    assert len(cfg.layers) == 1 and cfg.max_side is None and cfg.crop == DENOISE_CROP
    assert cfg.preprocess == "highpass"
    (l1,) = cfg.layers
    assert (l1.n_maps, l1.filter_size, l1.density, l1.n_epochs, l1.refine_epochs, l1.batch_size) == DENOISE_LAYER1
    calibrated = preset("calibrated", 2)
    assert l1.filter_method == "exact" and l1.method == "fista" and cfg.scaling == calibrated.scaling
    l2 = preset("denoise", 2).layers[1]
    assert (l2.n_maps, l2.connectivity) == (64, "random-pairs") and l2.density == calibrated.layers[1].density
    assert len(preset("calibrated").layers) == 3
