"""Does vatp handle a transformers architecture? Checked on a tiny random model of it, against the model itself.

    python -m vatp.analysis.compat --model PATH_OR_NAME       # a checkpoint's architecture (its config only)
    python -m vatp.analysis.compat --type llama mistral       # transformers model types
    python -m vatp.analysis.compat --all --out compat_out     # every causal-LM type transformers knows

Each architecture is built as a 2-layer random model (hidden size 64, 4 query and 2 KV heads of 16, a
128-token vocabulary, 4 experts if it has experts; a config that mixes attention kinds keeps one layer of
each) and checked, greedy:

* at a full budget (``heavy_ratio`` 1, nothing pruned), vatp gives the model's own tokens and logits
  (within 1e-4) with the mask and the evict backend, for one prompt and for a left-padded batch of two;
* pruned (H2O+VATP, Scissorhands, SnapKV+VATP), evict gives mask's tokens and logits.

A check either agrees, or vatp refuses with an :class:`~vatp.refusals.UnsupportedError` (a verdict, not a
failure); a different output or any other exception is a bug in vatp. Nothing is downloaded: ``--model``
reads a local checkpoint's config (or one in the hub cache), and runs no code the checkpoint ships unless
``--trust_remote_code`` says so (then only its config class, to read the config: the tiny model is built
from transformers' own classes). ``--all`` runs each type in its own process
(a type that crashes or eats the memory takes only itself down), appends one JSON line per type to
``OUT/compat.jsonl``, skips the types already there on a rerun, and writes the table ``OUT/compat.md``.

Exit status: 0, or 1 when a check found a BUG; 2 with one ``compat: error:`` line for a checkpoint it
cannot read; 130 on Ctrl-C.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings
from contextlib import nullcontext
from pathlib import Path

import torch

from .. import hook
from ..longbench.prediction_files import RunIOError, open_no_link
from ..refusals import UnsupportedError
from .output import write_text_file

SMALL = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)
SPECIAL = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
# Set where the config has them: fewer, smaller experts; multi-head latent attention's own widths (DeepSeek-V2/V3,
# MiniCPM3, ...), with values wider than keys.
EXPERTS = dict(n_routed_experts=4, num_experts=4, num_local_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
               n_group=1, topk_group=1)
LATENT = dict(num_key_value_heads=4, kv_lora_rank=16, q_lora_rank=32, qk_rope_head_dim=8, qk_nope_head_dim=16,
              v_head_dim=32, head_dim=8)
PROMPT, PADDING, STEPS = 100, 30, 8  # prompt tokens; the second row's padding; tokens generated
# The pruned settings (budgets large enough for SnapKV's 32-token window on the padded row).
PRUNED = {"H2O+VATP": dict(method="h2o", apval=True, heavy_ratio=0.2, sink_len=4),
          "Scissorhands": dict(method="scissorhands", heavy_ratio=0.2),
          "SnapKV+VATP": dict(method="snapkv", apval=True, heavy_ratio=0.3, sink_len=4)}
TOLERANCE = 1e-4
RESULTS, TABLE = "compat.jsonl", "compat.md"


class CompatError(Exception):
    """A checkpoint whose config cannot be read as asked; the message says how to fix it."""


def tiny_config(model_type: str, base: dict | None = None):
    """A 2-layer config of ``model_type`` (from ``base``, a checkpoint's config dict, if given); a config that
    mixes attention kinds (``layer_types``) keeps one layer of each, a multimodal one a small language model."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    # per_layer_config (Gemma 4) is indexed by layer: the config derives it again for the layers kept
    settings = {key: value for key, value in (base or {}).items() if key not in ("model_type", "per_layer_config")}
    settings.update(SMALL, **SPECIAL)
    kinds = list(dict.fromkeys(settings.get("layer_types") or []))
    if len(kinds) > 1:
        settings.update(layer_types=kinds, num_hidden_layers=len(kinds))
    elif kinds:
        settings["layer_types"] = kinds * 2
    config = AutoConfig.for_model(model_type, **settings)
    if "text_config" in getattr(config, "sub_configs", {}):  # a multimodal wrapper: its language model, small
        text = config.text_config
        settings["text_config"] = tiny_config(text.model_type, text.to_dict()).to_dict()
        config = AutoConfig.for_model(model_type, **settings)
    if getattr(config, "kv_lora_rank", None):
        config = AutoConfig.for_model(model_type, **(settings := settings | LATENT))
    try:
        return AutoConfig.for_model(model_type, **settings | {k: v for k, v in EXPERTS.items() if hasattr(config, k)})
    except (ValueError, StrictDataclassError):  # the config's validation refuses fewer experts (ZAYA: one per token): keep its own
        return config


def tiny_model(config):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.set_attn_implementation("eager")  # the reference: attention as the model computes it
    return model


def prompts() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{"one prompt": (ids, mask), "padded batch": (ids, mask)}``: the first row alone, and beside a left-padded one."""
    ids = torch.randint(3, 120, (2, PROMPT), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    ids[1, :PADDING], mask[1, :PADDING] = SPECIAL["pad_token_id"], 0
    return {"one prompt": (ids[:1], mask[:1]), "padded batch": (ids, mask)}


def generate(model, ids, mask, **settings) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens (B, L + STEPS) and logits (STEPS, B, vocab), with vatp on under ``settings`` if any."""
    with torch.no_grad(), (hook.enabled(model, **settings) if settings else nullcontext()):
        out = model.generate(ids, attention_mask=mask, max_new_tokens=STEPS, min_new_tokens=STEPS, do_sample=False,
                             output_logits=True, return_dict_in_generate=True)
    return out.sequences, torch.stack(out.logits)


def _outcome(run) -> tuple[dict, tuple | None]:
    """Run vatp: (a refusal or an error as a check result, None) or (None, its output)."""
    try:
        return None, run()
    except UnsupportedError as err:
        return {"result": "refused", "detail": str(err)}, None
    except Exception as err:  # anything else vatp raised is a bug: report it, do not hide it
        return {"result": "error", "detail": f"{type(err).__name__}: {err}"}, None


def _compare(reference, run) -> dict:
    """One check: ``{"result": "same" | "differs" | "refused" | "error", "detail": ...}``."""
    failed, output = _outcome(run)
    if failed:
        return failed
    gap = float((output[1] - reference[1]).abs().max())
    same = torch.equal(output[0], reference[0]) and gap <= TOLERANCE
    return {"result": "same" if same else "differs", "detail": f"max |logit difference| {gap:.2e}"}


def check_model(model, references: dict) -> dict[str, dict]:
    """Every check on ``model`` (a small eager-attention causal LM), given its own outputs on :func:`prompts`
    (``references``): check name -> its result."""
    checks = {}
    for name, (ids, mask) in prompts().items():
        for backend in ("mask", "evict"):
            checks[f"full budget, {name}, {backend}"] = _compare(
                references[name], lambda: generate(model, ids, mask, heavy_ratio=1.0, backend=backend))
    ids, mask = prompts()["padded batch"]
    for label, settings in PRUNED.items():
        failed, masked = _outcome(lambda: generate(model, ids, mask, backend="mask", **settings))
        checks[f"pruned {label}, evict == mask"] = failed or _compare(
            masked, lambda: generate(model, ids, mask, backend="evict", **settings))
    return checks


def verdict(checks: dict[str, dict]) -> str:
    """"supported", "partly supported", "refused" or "BUG" from a type's checks."""
    results = {check["result"] for check in checks.values()}
    if results & {"differs", "error"}:
        return "BUG"
    return {frozenset({"same"}): "supported", frozenset({"refused"}): "refused"}.get(frozenset(results),
                                                                                    "partly supported")


def check_type(model_type: str, base: dict | None = None) -> dict:
    """Build a tiny ``model_type`` and check it: ``{"type", "verdict", "checks", "reason"}``.

    A model transformers itself cannot build or run at this size is "not checked", with the reason.
    """
    warnings.filterwarnings("ignore")
    try:
        model = tiny_model(tiny_config(model_type, base))
        references = {name: generate(model, ids, mask) for name, (ids, mask) in prompts().items()}
    except Exception as err:
        return {"type": model_type, "verdict": "not checked", "checks": {},
                "reason": f"the model itself: {type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    checks = check_model(model, references)
    problems = [f"{name}: {check['detail']}" for name, check in checks.items()
                if check["result"] in ("differs", "error")]
    refused = {}
    for name, check in checks.items():
        if check["result"] == "refused":
            refused.setdefault(check["detail"], []).append(name)
    reasons = problems or [f"refused ({'; '.join(names)}): {detail}" if len(names) < len(checks) else detail
                           for detail, names in refused.items()]
    return {"type": model_type, "verdict": verdict(checks), "checks": checks, "reason": " / ".join(reasons)}


def causal_lm_types() -> list[str]:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return sorted(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _in_subprocess(model_type: str, timeout: int) -> dict:
    command = [sys.executable, "-m", "vatp.analysis.compat", "--type", model_type, "--json"]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"type": model_type, "verdict": "not checked", "checks": {}, "reason": f"over {timeout} s"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"type": model_type, "verdict": "not checked", "checks": {},
                "reason": f"the process ended with status {done.returncode} (out of memory or a crash)"}
    return json.loads(lines[-1])


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows`` (check_type results), grouped by verdict."""
    order = ["BUG", "supported", "partly supported", "refused", "not checked"]
    counts = ", ".join(f"{sum(r['verdict'] == v for r in rows)} {v}" for v in order)
    lines = [f"{len(rows)} model types: {counts}.", "", "| model type | verdict | why |", "| --- | --- | --- |"]
    for row in sorted(rows, key=lambda r: (order.index(r["verdict"]), r["type"])):
        reason = row["reason"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| `{row['type']}` | {row['verdict']} | {reason[:300]} |")
    return "\n".join(lines) + "\n"


def _read_results(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut by a kill: that type runs again
            pass
    return rows


def run_all(out: Path, types: list[str], timeout: int) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / RESULTS
    rows = _read_results(path)
    done = {row["type"] for row in rows}
    with open(path, "a", encoding="utf-8", opener=open_no_link) as results:  # a planted link is refused
        for model_type in types:
            if model_type in done:
                continue
            row = _in_subprocess(model_type, timeout)
            print(f"{model_type}: {row['verdict']}", flush=True)
            results.write(json.dumps(row) + "\n")
            results.flush()
            rows.append(row)
    write_text_file(out / TABLE, table(rows))
    return rows


def checkpoint_config(model: str, trust_remote_code: bool) -> dict:
    """The config of checkpoint ``model`` as a dict. Its own code runs only with ``trust_remote_code`` (passed to
    transformers, which would otherwise ask on the terminal); CompatError, with the fix, where it cannot be read."""
    from transformers import AutoConfig

    if model.startswith((".", "/", "~")) and not Path(model).expanduser().is_dir():  # else a hub name
        raise CompatError(f"{model}: no such folder; give a checkpoint folder that holds a config.json, or a "
                          "transformers model type with --type")
    try:
        return AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code).to_dict()
    except (OSError, ValueError) as err:
        if not trust_remote_code and "trust_remote_code" in str(err):
            raise CompatError(f"{model}: its config needs code from the checkpoint's own repository; pass "
                              "--trust_remote_code if you trust that repository") from None
        raise CompatError(f"{model}: cannot read its config ({' '.join(str(err).split())}); give a checkpoint "
                          "folder that holds a config.json, or a transformers model type with --type") from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m vatp.analysis.compat",
                                     description="Check vatp against a tiny random model of an architecture.")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", help="a checkpoint (local path or hub-cache name): its config's architecture")
    what.add_argument("--type", nargs="+", help="transformers model types (llama, mistral, ...)")
    what.add_argument("--all", action="store_true", help="every causal-LM model type of this transformers")
    parser.add_argument("--out", type=Path, help="with --all: where compat.jsonl and compat.md go")
    parser.add_argument("--timeout", type=int, default=300, help="with --all: seconds per type")
    parser.add_argument("--json", action="store_true", help="print each result as one JSON line")
    parser.add_argument("--trust_remote_code", action="store_true",
                        help="with --model: run the config code the checkpoint ships (only for repositories you "
                        "trust); without it such a checkpoint is refused")
    args = parser.parse_args(argv)
    if args.all and args.out is None:
        parser.error("--all needs --out")
    return args


def main(argv=None) -> int:
    """Check and print: 0, or 1 when a check found a BUG; 2 with one ``compat: error:`` line; 130 on Ctrl-C."""
    args = parse_args(argv)
    try:
        rows = check(args)
    except (CompatError, RunIOError, OSError) as err:
        print(f"compat: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = f": the results so far are kept in {args.out / RESULTS}; rerun the same command to resume" \
            if args.all else ""
        print(f"compat: interrupted{kept}", file=sys.stderr)
        return 130
    for row in rows if not args.all else []:
        print(json.dumps(row) if args.json else f"{row['type']}: {row['verdict']}" +
              "".join(f"\n  {name}: {c['result']} ({c['detail'][:160]})" for name, c in row["checks"].items()) +
              (f"\n  {row['reason']}" if not row["checks"] else ""))
    return 1 if any(row["verdict"] == "BUG" for row in rows) else 0


def check(args) -> list[dict]:
    """The check results the flags ask for (with --all, also written to OUT)."""
    if args.all:
        return run_all(args.out, causal_lm_types(), args.timeout)
    if args.model:
        base = checkpoint_config(args.model, args.trust_remote_code)
        return [check_type(base["model_type"], base)]
    return [check_type(model_type) for model_type in args.type]


if __name__ == "__main__":
    sys.exit(main())
