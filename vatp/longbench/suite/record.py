"""LongBench records and the token proxy shared by every task.

No tokenizer is assumed, so context sizes are requested in approximate
tokens and measured in characters: one token is taken as CHARS_PER_TOKEN
characters. With SmolLM2's tokenizer the reference text and the stdlib
sources both come to about 4 characters per token. The `length` field
keeps LongBench's own convention: whitespace-separated words of the context.
"""

import hashlib
import json

CHARS_PER_TOKEN = 4


def target_chars(tokens: int) -> int:
    """Character budget of a context of about `tokens` tokens."""
    return tokens * CHARS_PER_TOKEN


def make_record(dataset: str, context: str, input: str, answers: list[str],
                all_classes: list[str] | None = None) -> dict:
    """A record with LongBench's fields, in data.zip's key order.

    `_id` is a hash of the content, so identical samples share an id and
    any change in the text changes it.
    """
    record = {
        "input": input,
        "context": context,
        "answers": list(answers),
        "length": len(context.split()),
        "dataset": dataset,
        "language": "en",
        "all_classes": all_classes,
    }
    payload = json.dumps(record, ensure_ascii=False, sort_keys=True).encode("utf-8")
    record["_id"] = hashlib.sha256(payload).hexdigest()[:48]  # LongBench ids are 48 hex digits
    return record


def labelled_paragraphs(paragraphs: list[str]) -> str:
    """Join paragraphs as LongBench's passage tasks do: 'Paragraph k: text'."""
    return "\n\n".join(f"Paragraph {i}: {text}" for i, text in enumerate(paragraphs, 1))
