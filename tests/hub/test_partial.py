"""Selective loading by name: include/exclude (the selection rule), rename prefixes, the report, strictness."""

from __future__ import annotations

import re

import pytest
import torch
from torch import Tensor, nn

from lightning_dnn.hub import LoadReport, StrictLoadError, load_state_dict_partial
from lightning_dnn.nn import MLP
from tests.hub.conftest import make_mlp


def _snapshot(net: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _reference_selection(names: list[str], include: list[str] | None, exclude: list[str]) -> list[str]:
    """The selection rule written out as a plain loop: a pattern fullmatches the name or a module prefix of it."""
    chosen = []
    for name in names:
        parts = name.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        keep = include is None
        for pattern in include or []:
            if any(re.fullmatch(pattern, prefix) for prefix in prefixes):
                keep = True
        for pattern in exclude:
            if any(re.fullmatch(pattern, prefix) for prefix in prefixes):
                keep = False
        if keep:
            chosen.append(name)
    return chosen


@pytest.mark.parametrize(
    ("include", "exclude"),
    [
        ("hidden[123]", None),
        (["hidden1", "hidden3"], None),
        (None, r".*\.bn"),
        ("hidden[0-9]", ["hidden2", r".*num_batches_tracked"]),
        (r"hidden[12]\.linear\.weight", None),
    ],
)
def test_selection_matches_the_plain_loop_reference(
    include: str | list[str] | None, exclude: str | list[str] | None
) -> None:
    source, target = make_mlp(0), make_mlp(1)
    before = _snapshot(target)
    names = list(source.state_dict())
    inc = [include] if isinstance(include, str) else include
    exc = [exclude] if isinstance(exclude, str) else (exclude or [])
    expected = _reference_selection(names, inc, exc)

    report = load_state_dict_partial(target, source.state_dict(), include=include, exclude=exclude)

    assert report.loaded == expected
    assert report.skipped == [n for n in names if n not in expected]
    assert report.ok
    for name, value in target.state_dict().items():
        reference = source.state_dict()[name] if name in expected else before[name]
        assert torch.equal(value, reference), name


def test_chapter_reuse_hidden_layers_into_a_new_head() -> None:
    """hidden[12] of a 3-class network into one with 5 outputs: same lower-layer features, new head untouched."""
    source = make_mlp(0)
    torch.manual_seed(9)
    target = MLP(12, (10, 8, 6), 5, norm="batch", dropout=0.1).eval()
    head_before = target.output.linear.weight.clone()

    report = load_state_dict_partial(target, source.state_dict(), include="hidden[12]")

    x = torch.randn(7, 12)
    assert torch.equal(target.hidden2(target.hidden1(x)), source.hidden2(source.hidden1(x)))
    assert torch.equal(target.output.linear.weight, head_before)
    assert all(n.startswith(("hidden1.", "hidden2.")) for n in report.loaded)
    assert report.ok


def test_rename_maps_prefixes_longest_first() -> None:
    source = make_mlp(0)
    target = nn.Module()
    target.encoder = nn.Module()
    target.encoder.first = nn.Linear(12, 10, bias=False)
    target.encoder.first_bn = nn.BatchNorm1d(10)

    report = load_state_dict_partial(
        target,
        source.state_dict(),
        rename={
            "hidden1.linear.": "encoder.first.",
            "hidden1.bn.": "encoder.first_bn.",
            "hidden1.": "unused.",
        },
        include="encoder",
    )
    assert report.loaded == list(target.state_dict())
    assert torch.equal(target.encoder.first.weight, source.hidden1.linear.weight)
    assert torch.equal(target.encoder.first_bn.running_var, source.hidden1.bn.running_var)


def test_rename_errors() -> None:
    state = make_mlp(0).state_dict()
    with pytest.raises(ValueError, match="maps both"):
        load_state_dict_partial(make_mlp(1), state, rename={"hidden1.": "x.", "hidden2.": "x."})
    with pytest.raises(ValueError, match="match no name"):
        load_state_dict_partial(make_mlp(1), state, rename={"encoder.": "x."})
    with pytest.raises(TypeError, match="rename"):
        load_state_dict_partial(make_mlp(1), state, rename=["hidden1"])  # type: ignore[arg-type]


def test_strict_failure_lists_everything_and_leaves_the_target_untouched() -> None:
    source = make_mlp(0)
    target = MLP(12, (10, 7, 6, 5), 3, norm="batch").eval()  # hidden2/3 resized, hidden4 new, head resized
    before = _snapshot(target)

    with pytest.raises(StrictLoadError) as info:
        load_state_dict_partial(target, source.state_dict())

    report = info.value.report
    message = str(info.value)
    assert report.missing == [n for n in target.state_dict() if n.startswith("hidden4.")]
    mismatched = {name for name, _, _ in report.mismatched}
    expected_mismatch = {
        n
        for n, v in target.state_dict().items()
        if n in source.state_dict() and v.shape != source.state_dict()[n].shape
    }
    assert mismatched == expected_mismatch and len(expected_mismatch) > 5
    for name in [*report.missing, *mismatched]:
        assert name in message
    assert "hidden2.linear.weight (file (8, 10) vs target (7, 10))" in message
    assert "nothing was copied" in message
    for name, value in target.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_unexpected_names_fail_strict_loads() -> None:
    bigger = make_mlp(0)
    smaller = MLP(12, (10, 8), 4, norm="batch")
    with pytest.raises(StrictLoadError, match=r"not in the target \(6\): hidden3\.linear\.weight"):
        load_state_dict_partial(smaller, bigger.state_dict(), include="hidden[0-9]")


def test_non_strict_warns_with_the_same_list_and_loads_what_fits() -> None:
    source = make_mlp(0)
    target = MLP(12, (10, 7, 6), 4, norm="batch").eval()
    with pytest.raises(StrictLoadError) as info:
        load_state_dict_partial(target, source.state_dict())
    with pytest.warns(UserWarning) as record:
        report = load_state_dict_partial(target, source.state_dict(), strict=False)

    assert report == info.value.report
    assert report.problems() in str(record[0].message)
    for name in report.loaded:
        assert torch.equal(target.state_dict()[name], source.state_dict()[name]), name
    assert "hidden1.linear.weight" in report.loaded and "hidden3.bn.running_mean" in report.loaded


def test_patterns_that_match_nothing_are_errors() -> None:
    with pytest.raises(
        ValueError, match=r"`include` pattern 'hiden1' selects no name.*hidden1\.linear\.weight"
    ):
        load_state_dict_partial(make_mlp(1), make_mlp(0).state_dict(), include="hiden1")
    # a prefix of a name is not a match any more: "hidden" names no module (they are hidden1, hidden2, ...)
    with pytest.raises(ValueError, match=r"`include` pattern 'hidden' selects no name"):
        load_state_dict_partial(make_mlp(1), make_mlp(0).state_dict(), include="hidden")
    # names are relative to the network loaded into: no component is dropped, no suffix is tried
    with pytest.raises(ValueError, match=r"`exclude` pattern 'bn' selects no name"):
        load_state_dict_partial(make_mlp(1), make_mlp(0).state_dict(), exclude="bn")


def test_include_never_takes_longer_names_nor_deeper_suffixes() -> None:
    """hidden[12] takes hidden1 and hidden2 but not hidden10-hidden12 (re.match took them all)."""
    torch.manual_seed(0)
    source, target = MLP(4, (3,) * 12, 2), MLP(4, (3,) * 12, 2)
    with torch.no_grad():
        source.output.linear.bias.fill_(0.5)  # biases start at zero on both sides
    report = load_state_dict_partial(target, source.state_dict(), include="hidden[12]")
    assert report.loaded == [f"hidden{i}.linear.{t}" for i in (1, 2) for t in ("weight", "bias")]
    report = load_state_dict_partial(target, source.state_dict(), include=r"output\.linear\.weight")
    assert report.loaded == ["output.linear.weight"]
    assert torch.equal(target.output.linear.weight, source.output.linear.weight)
    assert not torch.equal(target.output.linear.bias, source.output.linear.bias)
    with pytest.raises(ValueError, match="invalid regex"):
        load_state_dict_partial(make_mlp(1), make_mlp(0).state_dict(), exclude="hidden[")


def test_report_text_lists_every_name() -> None:
    report = LoadReport(
        loaded=["a"], skipped=["b", "c"], missing=["d"], unexpected=["e"], mismatched=[("f", (1,), (2,))]
    )
    assert str(report).splitlines() == [
        "LoadReport: 1 loaded, 2 skipped, 1 missing, 1 unexpected, 1 mismatched",
        "  loaded: a",
        "  skipped: b, c",
        "  missing: d",
        "  unexpected: e",
        "  mismatched: f (file (1,) vs target (2,))",
    ]


def test_errors_survive_pickling_with_their_details() -> None:
    """Exceptions cross process boundaries (multiprocessing, DDP spawn) by pickle."""
    import pickle

    from lightning_dnn.hub import ChecksumMismatchError, UnsafeWeightsError

    with pytest.raises(StrictLoadError) as info:
        load_state_dict_partial(MLP(12, (10, 7, 6), 4, norm="batch"), make_mlp(0).state_dict())
    copy = pickle.loads(pickle.dumps(info.value))
    assert str(copy) == str(info.value) and copy.report == info.value.report
    unsafe = pickle.loads(pickle.dumps(UnsafeWeightsError("refused", ["a.bin"])))
    assert unsafe.files == ["a.bin"]
    mismatch = pickle.loads(
        pickle.dumps(ChecksumMismatchError("bad", repo_id="org/m", filename="f", cached=False))
    )
    assert (str(mismatch), mismatch.repo_id, mismatch.filename, mismatch.cached) == (
        "bad",
        "org/m",
        "f",
        False,
    )
