"""The shared argument checks: each error names the argument, what was expected and what was received."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_dnn._checks import check_bool, check_kwargs, close_matches_hint, unknown_name_error


@pytest.mark.parametrize("value", [True, False])
def test_check_bool_returns_a_bool(value: bool) -> None:
    assert check_bool("flag", value) is value


@pytest.mark.parametrize(
    ("value", "received"),
    [(1, "int 1"), (0, "int 0"), (None, "NoneType None"), ("yes", "str 'yes'"), (1.0, "float 1.0")],
)
def test_check_bool_refuses_everything_else(value: Any, received: str) -> None:
    with pytest.raises(TypeError, match=f"^`flag` must be a bool, got {received}$"):
        check_bool("flag", value)


def _build(alpha: float = 1.0, *, beta: int = 2) -> None: ...


def _anything(**kwargs: Any) -> None: ...


def test_check_kwargs_accepts_known_keywords_and_any_keyword_of_a_var_keyword_function() -> None:
    check_kwargs("thing", _build, {"alpha": 0.5, "beta": 3})
    check_kwargs("thing", _anything, {"whatever": 1})


def test_check_kwargs_names_each_unknown_keyword_with_its_close_match_and_the_accepted_ones() -> None:
    with pytest.raises(
        TypeError,
        match=r"^thing does not accept defaults 'alpah' \(did you mean 'alpha'\?\), 'zzz'; accepted: alpha=1\.0, beta=2$",
    ):
        check_kwargs("thing", _build, {"alpah": 0.5, "zzz": 1}, argument="defaults")
    with pytest.raises(TypeError, match=r"accepted: none$"):
        check_kwargs("thing", lambda: None, {"x": 1})


def test_close_matches_ignore_case_and_keep_the_registered_spelling() -> None:
    assert close_matches_hint("mlp", ["ConvNet", "MLP"]) == " Did you mean 'MLP'?"
    assert close_matches_hint(" ADAMM ", ["adam", "adamw", "sgd"]) == " Did you mean 'adam', 'adamw'?"
    assert close_matches_hint("xyz", ["adam"]) == ""


def test_unknown_name_error_lists_every_name_sorted() -> None:
    error = unknown_name_error("optimizer", "adamm", ["sgd", "adamw", "adam"])
    assert isinstance(error, ValueError)
    assert (
        str(error)
        == "Unknown optimizer 'adamm'. Did you mean 'adam', 'adamw'? Valid names: adam, adamw, sgd."
    )
