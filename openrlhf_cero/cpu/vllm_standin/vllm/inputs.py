"""Prompt types accepted by the stand-in engine."""

from typing import Any, TypedDict


class TokensPrompt(TypedDict, total=False):
    """A prompt given as token ids (the only kind OpenRLHF sends)."""

    prompt_token_ids: list[int]
    multi_modal_data: Any
