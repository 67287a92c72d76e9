"""How much of a client's input an error message repeats (app/domain/text.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.domain.text import ECHO_CHARS, cut


def test_short_text_is_kept_and_long_text_cut_with_its_length() -> None:
    assert cut("SKU-1") == "SKU-1"
    assert cut("x" * ECHO_CHARS) == "x" * ECHO_CHARS
    assert cut("x" * 5000) == "x" * (ECHO_CHARS - 1) + "\u2026 (5000 characters)"


@given(st.text(max_size=400), st.integers(min_value=1, max_value=200))
def test_never_more_than_the_limit_of_the_input(text: str, limit: int) -> None:
    out = cut(text, limit)
    if len(text) <= limit:
        assert out == text
    else:
        assert out.startswith(text[: limit - 1])
        assert len(out) <= limit + len(f" ({len(text)} characters)")
