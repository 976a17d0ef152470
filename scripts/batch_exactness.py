"""In which dtypes does a left-padded batch prune each row exactly as if it ran alone? Count it.

    python scripts/batch_exactness.py            # float32, float16, bfloat16 on the test suite's tiny GQA Llama

For every method with and without VATP (where it applies) and both backends, three prompts whose lengths differ
by more than a budget run alone and as one left-padded batch (as tests/test_batch.py does in float32); a row
is equal when its generated tokens and its kept sets at every layer are. It also counts how often the plain
model, without vatp, generates other tokens for a row in the batch than alone: where the model itself differs,
so can vatp. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import vatp  # noqa: E402
from conftest import method_variants, tiny_llama, variant_id  # noqa: E402
from test_batch import LENGTHS, _generate, _kept, _left_padded, _prompts  # noqa: E402


def rows_equal(model, settings: dict | None) -> list[bool]:
    """Per row: the batch's tokens (and kept sets, under vatp) equal the row's own run."""
    prompts = _prompts(LENGTHS)
    context = vatp.enabled(model, **settings) if settings else torch.no_grad()
    with context as session:
        alone = []
        for prompt in prompts:
            tokens = _generate(model, prompt[None], torch.ones(1, len(prompt), dtype=torch.long))[0]
            alone.append((tokens, _kept(session, 0) if settings else None))
        batched = _generate(model, *_left_padded(prompts))
        return [(batched[row], _kept(session, row) if settings else None) == alone[row] for row in range(len(prompts))]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dtypes", nargs="+", default=["float32", "float16", "bfloat16"])
    args = p.parse_args(argv)
    print("| dtype | plain model: rows equal | vatp: rows equal | vatp rows that differ |\n|---|---|---|---|")
    for name in args.dtypes:
        model = tiny_llama(num_heads=6, num_kv_heads=2, hidden=96).to(getattr(torch, name))
        plain = rows_equal(model, None)
        differ, total = [], 0
        for method, apval, adakv in method_variants(adakv=(False,)):
            for backend in ("mask", "evict"):
                equal = rows_equal(model, dict(method=method, apval=apval, heavy_ratio=0.35, sink_len=4,
                                               backend=backend))
                total += len(equal)
                differ += [f"{variant_id((method, apval, adakv))} {backend} row {row}"
                           for row, same in enumerate(equal) if not same]
        print(f"| {name} | {sum(plain)} of {len(plain)} | {total - len(differ)} of {total} | "
              f"{'; '.join(differ) or '-'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
