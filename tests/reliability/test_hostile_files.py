"""Hostile files: pickles renamed to safetensors, broken or huge safetensors headers, absurd config.json files,
integer weights, and property-based checks of config parsing and of the selection rule.

Every case ends in one of the documented errors (ValueError and its subclasses such as UnsafeWeightsError,
TypeError, StrictLoadError) naming the file, never runs code from the file and never allocates more than the
file holds.
"""

from __future__ import annotations

import json
import re
import resource
import struct
import tempfile
import tracemalloc
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file
from torch import nn

from lightning_dnn._selection import select_modules, select_parameters, select_tensor_names
from lightning_dnn.hub import (
    StrictLoadError,
    UnsafeWeightsError,
    WeightsFileError,
    load_pretrained,
    save_pretrained,
)
from lightning_dnn.nn import MLP
from tests.hub.conftest import make_mlp
from tests.reliability._hub_fixtures import HubFaults, MarkerPayload, marker_pickle

DOCUMENTED = (ValueError, TypeError, StrictLoadError)
# A network from config.json that needs this many more bytes of RSS than the test started with was built for real.
RSS_BUDGET_KIB = 1 << 20  # 1 GiB


def _folder(tmp_path: Path, seed: int = 0) -> tuple[Path, MLP]:
    net = make_mlp(seed)
    return save_pretrained(net, tmp_path / f"net{seed}"), net


def _set_config(folder: Path, **changes: Any) -> None:
    path = folder / "config.json"
    document = json.loads(path.read_text())
    document["config"].update(changes)
    path.write_text(json.dumps(document))


def _safetensors_bytes(header: dict[str, Any], data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


# --- pickles renamed to model.safetensors -------------------------------------------------------------------------


def test_pickle_renamed_to_safetensors_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    marker = tmp_path / "marker"
    (folder / "model.safetensors").write_bytes(marker_pickle(marker))
    with pytest.raises(UnsafeWeightsError) as info:
        load_pretrained(folder)
    assert str(folder / "model.safetensors") in str(info.value) and "pickle" in str(info.value)
    assert not marker.exists()


def test_torch_save_zip_renamed_to_safetensors_is_refused_and_never_unpickled(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    marker = tmp_path / "marker"
    torch.save({"hidden1.linear.weight": MarkerPayload(marker)}, folder / "model.safetensors")
    with pytest.raises(UnsafeWeightsError, match=r"torch\.save"):
        load_pretrained(folder)
    assert not marker.exists()


def test_pickle_renamed_on_the_hub_is_refused_and_never_unpickled(hub: HubFaults, tmp_path: Path) -> None:
    with pytest.raises(UnsafeWeightsError, match="pickle"):
        load_pretrained("hf://org/pickle-renamed", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert not hub.marker.exists()


# --- broken and huge safetensors ------------------------------------------------------------------------------------


def _corruptions(good: bytes) -> dict[str, tuple[bytes, str]]:
    (length,) = struct.unpack("<Q", good[:8])
    return {
        "empty": (b"", "is empty"),
        "shorter than the length field": (good[:5], "shorter than"),
        "cut in the header": (good[: 8 + length // 2], "header"),
        "cut in the data": (good[: len(good) - 7], "truncated"),
        "text": (b"this is not a safetensors file at all, just text" * 3, "header"),
        "header is not json": (struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16, "JSON"),
        "header is a list": (_safetensors_bytes([], b""), "JSON object"),  # type: ignore[arg-type]
        "unknown dtype": (
            _safetensors_bytes({"w": {"dtype": "Q9", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "dtype",
        ),
        "shape and offsets disagree": (
            _safetensors_bytes({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 4]}}, b"\0" * 4),
            "offsets",
        ),
        "negative shape": (
            _safetensors_bytes({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4),
            "shape",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "empty",
        "shorter than the length field",
        "cut in the header",
        "cut in the data",
        "text",
        "header is not json",
        "header is a list",
        "unknown dtype",
        "shape and offsets disagree",
        "negative shape",
    ],
)
def test_broken_safetensors_raise_an_error_naming_the_file(tmp_path: Path, case: str) -> None:
    folder, _ = _folder(tmp_path)
    weights = folder / "model.safetensors"
    data, what = _corruptions(weights.read_bytes())[case]
    weights.write_bytes(data)
    with pytest.raises(WeightsFileError) as info:
        load_pretrained(folder)
    assert str(weights) in str(info.value) and what in str(info.value), str(info.value)
    assert isinstance(info.value, ValueError)


def test_truncated_safetensors_on_the_hub_names_the_file(hub: HubFaults, tmp_path: Path) -> None:
    with pytest.raises(WeightsFileError, match="truncated") as info:
        load_pretrained("hf://org/truncated", endpoint=hub.url, cache_dir=tmp_path / "cache")
    assert "model.safetensors" in str(info.value) and "hf://org/truncated" in str(info.value)


def test_huge_header_length_is_refused_without_reading_it(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    weights = folder / "model.safetensors"
    size = 4 << 30  # a sparse 4 GiB file whose length field claims a header of almost all of it
    with open(weights, "wb") as f:
        f.write(struct.pack("<Q", size - 8))
        f.truncate(size)
    tracemalloc.start()
    try:
        with pytest.raises(WeightsFileError, match="header") as info:
            load_pretrained(folder)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(size - 8) in str(info.value)
    assert peak < 16 << 20, peak  # nothing near the claimed size was read


def test_header_claiming_more_data_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    weights = folder / "model.safetensors"
    huge = {"hidden1.linear.weight": {"dtype": "F32", "shape": [50000, 50000], "data_offsets": [0, 10**10]}}
    weights.write_bytes(_safetensors_bytes(huge, b"\0" * 64))
    with pytest.raises(WeightsFileError, match="truncated") as info:
        load_pretrained(folder)
    assert "10000000000" in str(info.value) and "64" in str(info.value)


# --- absurd config.json --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [[3000, 3000], [200000, 200000]])
def test_config_far_bigger_than_the_weights_is_refused_before_building(
    tmp_path: Path, hidden: list[int]
) -> None:
    folder, net = _folder(tmp_path)
    _set_config(folder, hidden=hidden)
    file_numel = sum(t.numel() for t in net.state_dict().values())
    with pytest.raises(ValueError, match=r"config\.json") as info:
        load_pretrained(folder, strict=False)
    message = str(info.value)
    assert f"{file_numel:,}" in message and "into=" in message
    with torch.device("meta"):
        described = MLP(12, hidden, 4, norm="batch", dropout=0.1)
    config_numel = sum(t.numel() for t in described.state_dict().values())
    assert f"{config_numel:,}" in message


@pytest.mark.parametrize(
    ("text", "what"),
    [
        ("not json at all", "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, "nested"),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": 1'
            + "0" * 5000
            + "}}",
            "JSON",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MPL", "config": {"in_features": 12}}',
            "Did you mean 'MLP'",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": -12}}',
            "in_features",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": "12"}}',
            "in_features",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": 12, "hidden": [10, -8]}}',
            "hidden",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": 12, "hidden": {"a": 1}}}',
            "hidden",
        ),
        (
            '{"library": "lightning-dnn", "architecture": "MLP", "config": {"in_features": 12, "typo": 1}}',
            "typo",
        ),
        ('{"library": "lightning-dnn", "architecture": ["MLP"], "config": {}}', "architecture"),
    ],
)
def test_absurd_configs_raise_a_value_error_naming_the_file(tmp_path: Path, text: str, what: str) -> None:
    folder, _ = _folder(tmp_path)
    (folder / "config.json").write_text(text)
    with pytest.raises(ValueError) as info:
        load_pretrained(folder, strict=False)
    assert str(folder / "config.json") in str(info.value) and what in str(info.value), str(info.value)


def test_non_utf8_and_oversized_configs_are_named(tmp_path: Path) -> None:
    folder, _ = _folder(tmp_path)
    config = folder / "config.json"
    config.write_bytes(b'{"library": "\xff\xfe"}')
    with pytest.raises(ValueError, match="UTF-8") as info:
        load_pretrained(folder)
    assert str(config) in str(info.value)
    config.write_text('{"padding": "' + "x" * (2 << 20) + '"}')
    with pytest.raises(ValueError, match="bytes") as info:
        load_pretrained(folder)
    assert str(config) in str(info.value)


# --- integer and bool weights ---------------------------------------------------------------------------------------


def _with_dtype(folder: Path, name: str, dtype: torch.dtype) -> None:
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    tensors[name] = tensors[name].round().to(dtype)
    save_file(tensors, str(folder / "model.safetensors"))


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_weights_into_float_parameters_are_refused_when_strict(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    folder, _ = _folder(tmp_path)
    _with_dtype(folder, "hidden1.linear.weight", dtype)
    with pytest.raises(StrictLoadError) as info:
        load_pretrained(folder)
    message = str(info.value)
    assert "hidden1.linear.weight" in message and str(dtype).removeprefix("torch.") in message
    assert "float32" in message
    target = MLP(12, (10, 8, 6), 4, norm="batch", dropout=0.1)
    before = target.hidden1.linear.weight.detach().clone()
    with pytest.raises(StrictLoadError, match="dtype"):
        load_pretrained(folder, into=target)
    assert torch.equal(target.hidden1.linear.weight, before)  # nothing copied


def test_integer_weights_are_skipped_with_a_warning_when_not_strict(tmp_path: Path) -> None:
    folder, trained = _folder(tmp_path)
    _with_dtype(folder, "hidden1.linear.weight", torch.int64)
    with pytest.warns(UserWarning, match=r"hidden1\.linear\.weight \(file int64 vs target float32\)"):
        net, report = load_pretrained(folder, strict=False)
    assert [name for name, _, _ in report.dtype_mismatched] == ["hidden1.linear.weight"]
    assert "hidden1.linear.weight" not in report.loaded
    assert torch.equal(net.hidden2.linear.weight, trained.hidden2.linear.weight)


def test_integer_buffers_round_trip_exactly(tmp_path: Path) -> None:
    folder, trained = _folder(tmp_path, seed=5)
    net, report = load_pretrained(folder)
    assert report.ok and not report.dtype_mismatched
    for name, value in trained.state_dict().items():
        loaded = net.state_dict()[name]
        assert loaded.dtype == value.dtype and torch.equal(loaded, value), name
    assert net.hidden1.bn.num_batches_tracked.dtype == torch.int64
    assert int(net.hidden1.bn.num_batches_tracked) == 12


# --- property-based: config parsing -----------------------------------------------------------------------------

_json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
)
_json = st.recursive(
    _json_leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
_size = st.one_of(st.integers(min_value=-5, max_value=10**7), _json)
_mlp_config = st.fixed_dictionaries(
    {"in_features": st.one_of(st.just(12), _size)},
    optional={
        "hidden": st.one_of(st.lists(_size, max_size=4), _size),
        "out_features": st.one_of(st.just(4), _size),
        "activation": st.one_of(st.sampled_from(["elu", "relu", "nope"]), _json),
        "norm": st.one_of(st.just("batch"), _json),
        "dropout": st.one_of(st.floats(), _json),
        "bn_momentum": st.one_of(st.floats(), _json),
        "init": st.one_of(st.sampled_from(["he_normal", "xavier_uniform"]), _json),
        "output_norm": _json,
    },
)
_conv_config = st.fixed_dictionaries(
    {},
    optional={
        "in_channels": _size,
        "channels": st.one_of(st.lists(_size, max_size=3), _size),
        "num_classes": _size,
        "activation": _json,
    },
)
_plausible_mlp = st.fixed_dictionaries(
    {
        "library": st.just("lightning-dnn"),
        "architecture": st.just("MLP"),
        "config": st.fixed_dictionaries(
            {
                "in_features": st.one_of(st.just(12), st.integers(min_value=1, max_value=10**6)),
                "hidden": st.lists(st.integers(min_value=1, max_value=10**6), min_size=1, max_size=4),
                "out_features": st.one_of(st.just(4), st.integers(min_value=1, max_value=10**6)),
            },
            optional={"norm": st.just("batch"), "dropout": st.just(0.1)},
        ),
    }
)
_document = st.one_of(
    _plausible_mlp,
    st.fixed_dictionaries(
        {"library": st.just("lightning-dnn"), "architecture": st.just("MLP"), "config": _mlp_config}
    ),
    st.fixed_dictionaries(
        {"library": st.just("lightning-dnn"), "architecture": st.just("ConvNet"), "config": _conv_config}
    ),
    st.fixed_dictionaries(
        {
            "library": st.sampled_from(["lightning-dnn", "transformers", ""]),
            "architecture": st.one_of(st.text(max_size=10), _json),
            "config": _json,
            "metadata": _json,
        }
    ),
    _json,
)


@pytest.fixture(scope="module")
def weights_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_pretrained(make_mlp(0), tmp_path_factory.mktemp("fuzz") / "net")


def _numel(folder: Path) -> int:
    from safetensors.torch import load_file

    return sum(t.numel() for t in load_file(str(folder / "model.safetensors")).values())


def _peak_rss_kib() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def _check_fuzzed_config(weights_folder: Path, document: Any, strict: bool) -> None:
    rss = _peak_rss_kib()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "model.safetensors").write_bytes((weights_folder / "model.safetensors").read_bytes())
        (folder / "config.json").write_text(json.dumps(document))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # strict=False reports what it left out
                net, _ = load_pretrained(folder, strict=strict)
        except DOCUMENTED as err:
            size_guard = "parameter and buffer elements" in str(err)
            event(
                f"refused: {type(err).__name__}"
                + (" (config far bigger than the file)" if size_guard else "")
            )
            if not isinstance(err, StrictLoadError):
                assert "config.json" in str(err), str(err)
        else:
            event("loaded")
            numel = sum(t.numel() for t in net.state_dict().values())
            assert numel <= 2 * _numel(weights_folder) + (1 << 20)
    assert _peak_rss_kib() - rss < RSS_BUDGET_KIB


_FUZZ = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}


@settings(max_examples=60, **_FUZZ)
@given(document=_document, strict=st.booleans())
def test_fuzzed_config_raises_only_documented_errors(
    weights_folder: Path, document: Any, strict: bool
) -> None:
    _check_fuzzed_config(weights_folder, document, strict)


@pytest.mark.slow
@settings(max_examples=2000, **_FUZZ)
@given(document=_document, strict=st.booleans())
def test_fuzzed_config_raises_only_documented_errors_long(
    weights_folder: Path, document: Any, strict: bool
) -> None:
    _check_fuzzed_config(weights_folder, document, strict)


# --- property-based: the selection rule ----------------------------------------------------------------------------

_NAMES = ["a", "b", "hidden1", "hidden12", "0", "1", "conv", "bn"]


class _Leaf(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))


def _build(tree: dict[str, Any]) -> nn.Module:
    module = nn.Module()
    for name, sub in tree.items():
        module.add_module(name, _Leaf() if sub is None else _build(sub))
    return module


_trees = st.recursive(
    st.none(),
    lambda inner: st.dictionaries(st.sampled_from(_NAMES), inner, min_size=1, max_size=3),
    max_leaves=10,
).filter(lambda t: isinstance(t, dict))


def _module_names(root: nn.Module) -> list[str]:
    return [n for n, _ in root.named_modules() if n]


@st.composite
def _tree_and_patterns(draw: st.DrawFn) -> tuple[nn.Module, list[str]]:
    root = _build(draw(_trees))
    names = _module_names(root) + [n for n, _ in root.named_parameters()]
    patterns = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        name = draw(st.sampled_from(names))
        parts = name.split(".")
        piece = draw(
            st.sampled_from(
                [name, parts[-1], ".".join(parts[1:]) or name, parts[0], ".".join(parts[:-1]) or name]
            )
        )
        form = draw(st.sampled_from(["exact", "escaped", "digits", "tail", "alternation", "any-prefix"]))
        escaped = re.escape(piece)
        pattern = {
            "exact": piece,
            "escaped": escaped,
            "digits": re.sub(r"[0-9]", "[0-9]", escaped),
            "tail": escaped + r"(\..*)?",
            "alternation": f"{escaped}|{re.escape(draw(st.sampled_from(names)))}",
            "any-prefix": r".*\." + escaped,
        }[form]
        patterns.append(pattern)
    return root, patterns


def _ref_names(name: str, drop_first: bool) -> list[str]:
    """The rule in plain words: the name itself and, when asked, the name without its first component."""
    out = [name]
    if drop_first and "." in name:
        out.append(name[name.index(".") + 1 :])
    return out


def _ref_named(pattern: str, name: str, drop_first: bool) -> bool:
    return any(re.fullmatch(pattern, candidate) is not None for candidate in _ref_names(name, drop_first))


def _ref_selected_tensors(root: nn.Module, patterns: list[str], drop_first: bool) -> set[str]:
    """Tensors named by a pattern, plus every tensor of each named module's subtree (walking the modules)."""
    selected = {n for n, _ in root.named_parameters() if any(_ref_named(p, n, drop_first) for p in patterns)}
    for name, module in root.named_modules():
        if name and any(_ref_named(p, name, drop_first) for p in patterns):
            selected |= {f"{name}.{sub}" for sub, _ in module.named_parameters()}
    return selected


def _check_selection(case: tuple[nn.Module, list[str]], drop_first: bool) -> None:
    root, patterns = case
    modules = _module_names(root)
    tensors = [n for n, _ in root.named_parameters()]

    expected_modules = [n for n in modules if any(_ref_named(p, n, drop_first) for p in patterns)]
    if all(any(_ref_named(p, n, drop_first) for n in modules) for p in patterns):
        event("every pattern names a module")
        got = [n for n, _ in select_modules(root, patterns, drop_first=drop_first)]
        assert got == expected_modules
    else:
        event("a pattern names no module")
        with pytest.raises(ValueError, match="selects no module"):
            select_modules(root, patterns, drop_first=drop_first)

    expected_tensors = _ref_selected_tensors(root, patterns, drop_first)
    if all(_ref_selected_tensors(root, [p], drop_first) for p in patterns):
        got_params = [n for n, _ in select_parameters(root, patterns, drop_first=drop_first)]
        assert got_params == [n for n in tensors if n in expected_tensors]
        got_names = select_tensor_names(tensors, patterns, drop_first=drop_first)
        assert got_names == [n for n in tensors if n in expected_tensors]
    else:
        with pytest.raises(ValueError, match="selects no"):
            select_tensor_names(tensors, patterns, drop_first=drop_first)


@settings(max_examples=150, deadline=None)
@given(case=_tree_and_patterns(), drop_first=st.booleans())
def test_selection_agrees_with_a_plain_reference(case: tuple[nn.Module, list[str]], drop_first: bool) -> None:
    _check_selection(case, drop_first)


@pytest.mark.slow
@settings(max_examples=3000, deadline=None)
@given(case=_tree_and_patterns(), drop_first=st.booleans())
def test_selection_agrees_with_a_plain_reference_long(
    case: tuple[nn.Module, list[str]], drop_first: bool
) -> None:
    _check_selection(case, drop_first)
