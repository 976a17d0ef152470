"""Generate LongBench predictions with a pruned KV cache (the paper's pred.py command line).

    python pred.py --model llama2-7b-chat-4k --sink_len 20 --save outctllam2/h2ovatp \
        --heavy_ratio 0.25 --e --h2o --apval

writes ``{save}/{model}/{dataset}.jsonl`` (LongBench's format) and a run record
``run_{dataset}.json`` beside it. Reruns resume; ``accelerate launch --multi_gpu
--num_processes N pred.py ...`` (or ``torchrun --nproc_per_node N``) splits the
samples over processes, on GPUs or CPU. ``--heavy_ratio 1.0`` runs the full cache.

Flags, configs, data and every prompt's cache budget are checked before the model
loads; a problem stops the run with exit status 2 and a one-line message.
``VATP_CONFIG_DIR`` points at another folder than ``config/``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import sys
import time
import warnings
from typing import TYPE_CHECKING, NamedTuple

import vatp  # its names load lazily: no torch import yet
from vatp import names
from vatp.longbench import runs
from vatp.longbench.data import (DataError, UsageError, dataset_configs, default_datasets, load_samples, resolve_model,
                                 seed_everything)
from vatp.longbench.models import default_dtype, load_model_config, load_tokenizer
from vatp.longbench.prompts import cut_at_stop, decode, encode_prompt, generation_kwargs, left_pad, post_process
from vatp.refusals import UnsupportedError

if TYPE_CHECKING:
    from accelerate import PartialState


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper = p.add_argument_group("the paper's flags")
    paper.add_argument("--model", default="smollm2-135m-instruct",
                       help="a name in config/model2path.json (default: the embedded SmolLM2-135M-Instruct)")
    paper.add_argument("--e", action="store_true", help="LongBench-E: the 13 {dataset}_e sets")
    paper.add_argument("--save", default="pred", help="predictions go to SAVE/MODEL/DATASET.jsonl")
    paper.add_argument("--heavy_ratio", type=float, default=0.1,
                       help="heavy-hitter ratio r in (0, 1]; H2O keeps int(r*L) heavy + int(r*L) recent tokens, "
                            "so 0.25 is the paper's 50%% budget; 1.0 runs the full cache")
    paper.add_argument("--recent_ratio", type=float, default=None,
                       help="accepted for compatibility and ignored: the paper's code uses heavy_ratio for both")
    paper.add_argument("--apval", action="store_true", help="VATP: weight scores by value L1 norms, keep the sinks")
    paper.add_argument("--h2o", action="store_true", help="H2O scoring; without it, the paper's Scissorhands variant")
    paper.add_argument("--sink_len", type=int, default=0, help="leading tokens always kept (with --apval)")
    ours = p.add_argument_group("added by this project")
    ours.add_argument("--data_dir", default=None,
                      help="local LongBench folder ({dataset}.jsonl, {dataset}_e.jsonl as in data.zip); "
                           "default: the Hugging Face hub")
    ours.add_argument("--datasets", nargs="+", default=None,
                      help="datasets to run (default: the paper's: the 13 LongBench-E sets with --e, "
                           "else narrativeqa musique qmsum)")
    ours.add_argument("--limit", type=int, default=None, help="only the first N samples of each dataset")
    ours.add_argument("--method", choices=list(names.METHODS), default=None,
                      help="the token-importance method (default: the paper's flags: h2o with --h2o, else "
                           "scissorhands); streaming = sinks (--sink_len) + recent tokens with H2O's total budget; "
                           "snapkv = SnapKV (the last 32 queries' attention, max-pooled; the prompt only); tova = "
                           "the newest query's attention at every step; knorm = the lowest key norms (the prompt "
                           "only); criticalkv = CriticalKV over SnapKV's scores (values projected through o_proj); "
                           "pyramidkv = SnapKV with larger budgets in lower layers. --apval adds VATP to any of them")
    ours.add_argument("--vnorm", choices=names.VALUE_NORMS, default="l1",
                      help="VATP's value term (with --apval): l1 (the paper's, default), l2, or wo_l1 (the value "
                           "projected through o_proj, CriticalKV's)")
    ours.add_argument("--vepsilon", type=float, default=0.0,
                      help="VATP scores (s + EPS) * norm (with --apval; default 0, the paper's)")
    ours.add_argument("--vstage", type=float, default=0.0,
                      help="the share of the budget VATP keeps by the method's score alone before the product ranks "
                           "the rest (with --apval; CriticalKV's first stage; default 0)")
    ours.add_argument("--adakv", action="store_true",
                      help="AdaKV: spread each layer's budget over its KV heads by score (any method)")
    ours.add_argument("--backend", choices=names.BACKENDS, default="mask",
                      help="mask: the paper's faithful masking (default); evict: remove pruned tokens from the cache")
    ours.add_argument("--scoring", choices=names.SCORINGS, default=None,
                      help="prefill scoring: eager L x L probabilities, chunked (eager in chunks of query rows), "
                           "window (SDPA for every query, eager probabilities for the method's window only) or fused "
                           "(SDPA + a Triton column-sum kernel, CUDA); default eager for mask, chunked for evict")
    ours.add_argument("--compile", choices=names.COMPILE_MODES, nargs="?", const="default", default=None,
                      help="compile vatp's decode step with torch.compile (fullgraph): default, or reduce-overhead "
                           "(CUDA graphs) or max-autotune")
    ours.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: accelerate's, else cuda if available)")
    ours.add_argument("--device_map", default=None, help="e.g. auto: spread a model too big for one GPU over several")
    ours.add_argument("--dtype", choices=names.DTYPE_NAMES, default=None,
                      help="default: float16 for the paper's models (llama2, vicuna, longchat), as the paper; "
                           "otherwise the checkpoint's own dtype (float32 if it names none)")
    ours.add_argument("--score_dtype", choices=names.SCORE_DTYPES, default=None,
                      help="arithmetic of the scores: model (the paper's: probabilities rounded to the model dtype, "
                           "scores accumulated in it) or float32; default float32 for bfloat16 models, else model")
    ours.add_argument("--trust_remote_code", action="store_true",
                      help="run the code a model's repository ships (internlm, xgen need it); "
                           "only for repositories you trust")
    ours.add_argument("--batch_size", type=int, default=1,
                      help="prompts generated together, grouped by length (left-padded); each is pruned as if it "
                           "ran alone, and the predictions are the same (default 1, as the paper). With --engine "
                           "cb: the whole prompts the engine's block pool holds at once")
    ours.add_argument("--engine", choices=("generate", "cb"), default="generate",
                      help="generate: model.generate, batch after batch (default); cb: transformers' continuous "
                           "batching (vatp/engine), every sample of a dataset queued at once, each pruned as if it "
                           "ran alone (the predictions of --backend evict), the blocks pruning frees holding more")
    ours.add_argument("--overwrite", action="store_true",
                      help="delete predictions made with other settings instead of refusing")
    return p.parse_args(argv)


def check_args(args) -> None:
    """The checks that need nothing but the flags."""
    if not 0.0 < args.heavy_ratio <= 1.0:
        raise UsageError(f"--heavy_ratio must be in (0, 1], got {args.heavy_ratio} "
                         "(0.25 is the paper's 50% budget, 1.0 the full cache)")
    if args.recent_ratio is not None:
        if not 0.0 < args.recent_ratio <= 1.0:
            raise UsageError(f"--recent_ratio must be in (0, 1], got {args.recent_ratio} (it is ignored: "
                             "the paper's code sets recent_ratio = heavy_ratio; leave it out)")
        if args.recent_ratio != args.heavy_ratio:
            warnings.warn("--recent_ratio is ignored: the paper's code sets recent_ratio = heavy_ratio", stacklevel=2)
    if args.sink_len < 0:
        raise UsageError(f"--sink_len must be >= 0, got {args.sink_len}")
    if args.limit is not None and args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.h2o and args.method not in (None, "h2o"):
        raise UsageError(f"--h2o picks H2O but --method says {args.method}; give one of them")
    if args.engine == "cb":
        if "samsum" in (args.datasets or default_datasets(args.e)):
            raise UsageError("samsum generates at least one token before its stop (LongBench's min_length), which "
                             "transformers' continuous batching cannot enforce; run samsum with --engine generate")
        for flag, value in (("--adakv", args.adakv), ("--compile", args.compile),
                            ("--scoring", args.scoring not in (None, "chunked", "eager") and args.scoring)):
            if value:
                raise UsageError(f"--engine cb does not take {flag} (the engine holds one number of slots per "
                                 "request, scores prompts chunk by chunk in eager's arithmetic and compiles "
                                 f"nothing); drop {flag}, or use --engine generate")
    if given := [f"--{name}" for name in not_applying(args) if getattr(args, name) != DEFAULTS[name]]:
        listed = given[0] if len(given) == 1 else f"{', '.join(given[:-1])} and {given[-1]}"
        warnings.warn(f"{listed} do{'es' * (len(given) == 1)} not apply to this run ({describe(args)}): recorded in "
                      "the run record, but not part of the run's identity", stacklevel=2)


# The flags each run may leave unused, at their defaults.
DEFAULTS = {"method": None, "h2o": False, "apval": False, "adakv": False, "sink_len": 0, "backend": "mask",
            "scoring": None, "score_dtype": None, "compile": None, "vnorm": "l1", "vepsilon": 0.0, "vstage": 0.0}


def not_applying(args) -> list[str]:
    """The flags this run ignores: the full cache (--heavy_ratio 1) uses no method flag, only VATP and
    StreamingLLM keep sinks, and the engine (--engine cb) always evicts. They are stored in its run records but
    not compared, so that the same run with other values of them resumes."""
    if args.heavy_ratio >= 1.0:
        return list(DEFAULTS)
    sinks = args.apval or method_name(args) == "streaming"
    return ([] if sinks else ["sink_len"]) + (["backend"] if args.engine == "cb" else [])


def method_name(args) -> str:
    """The method the flags pick: --method, else the paper's --h2o (H2O) or its default (Scissorhands)."""
    return args.method or names.paper_method(args.h2o)


def main(argv=None) -> int:
    """Run pred.py: 0 when done; 2 with one ``pred.py: error:`` line; 130 with one line on Ctrl-C."""
    args = parse_args(argv)
    try:
        check_args(args)
        return run(args)
    except (UsageError, DataError, runs.RunIOError, UnsupportedError) as err:
        message = str(err)
    except OSError as err:  # a read-only folder, a full disk, --save on a file, ...
        message = runs.os_error_message(err)
    except KeyboardInterrupt:
        print(f"pred.py: interrupted: {kept_predictions(args)}; rerun the same command to resume", file=sys.stderr)
        return 130
    print(f"pred.py: error: {message}", file=sys.stderr)
    return 2


def kept_predictions(args) -> str:
    """How many predictions the datasets of this run hold on disk, for the Ctrl-C line."""
    folder = out_dir(args)
    try:
        names = dict.fromkeys(args.datasets or default_datasets(args.e))
        count = sum(len(runs.done_ids([runs.final_path(folder, name), *runs.part_paths(folder, name)]))
                    for name in names)
    except (runs.RunIOError, UsageError, OSError):
        return f"the predictions made so far are kept in {folder}"
    return f"{count} prediction{'s' * (count != 1)} kept in {folder}"


def out_dir(args) -> str:
    """Where the run's predictions and records go: SAVE/MODEL."""
    return f"{args.save}/{args.model}"


def run(args) -> int:
    """Resolve everything (no writes, no model), claim the datasets (rank 0), load the model, predict."""
    job = resolve(args)
    with contextlib.ExitStack() as locks:  # rank 0 holds each dataset's lock until the run ends
        plans = claim(args, job, locks)
        model, tokenizer = load(args, job)
        predict(args, job, model, tokenizer, plans)
    return 0


class Inputs(NamedTuple):
    """What the flags name, read and checked without torch (in a fraction of a second)."""

    model_path: str
    max_length: int  # prompt tokens (model2maxlen)
    prompts: dict[str, str]  # dataset -> prompt template (dataset2prompt)
    max_new: dict[str, int]  # dataset -> tokens to generate (dataset2maxlen)
    samples: dict[str, list[dict]]  # dataset -> its samples, cut to --limit
    sizes: dict[str, int]  # dataset -> its number of samples before --limit (for the run record)


class Job(NamedTuple):
    """A run, resolved before the model loads: the inputs, every prompt, and where and how it runs."""

    inputs: Inputs
    encoded: dict[str, list]  # dataset -> each sample's prompt ids (1, n)
    config: vatp.VatpConfig | None  # its scoring settled; None: the full cache
    state: PartialState  # accelerate's: this process's rank, the number of processes
    device: str
    dtype: str


def read_inputs(args) -> Inputs:
    """The model's path and prompt limit, the datasets' configs and samples; no torch."""
    path, max_length = resolve_model(args.model)
    datasets = args.datasets or default_datasets(args.e)
    prompts, max_new = dataset_configs(datasets)
    everything = {name: load_samples(name, args.e, args.data_dir) for name in datasets}
    samples = {name: whole[: args.limit] for name, whole in everything.items()}
    return Inputs(path, max_length, prompts, max_new, samples, {name: len(whole) for name, whole in everything.items()})


def resolve(args) -> Job:
    """The inputs, then every prompt and its cache budget (every rank checks all samples, so that all fail
    alike), the device, dtype and scoring: all checked before the model loads, and nothing written."""
    inputs = read_inputs(args)
    import torch
    from accelerate import PartialState

    check_device(args.device)
    config = vatp_config(args)
    model_config = load_model_config(inputs.model_path, args.trust_remote_code)
    tokenizer = load_tokenizer(inputs.model_path, args.trust_remote_code)
    encoded = {name: encode_dataset(args, name, samples, tokenizer, inputs.prompts[name], inputs.max_length, config)
               for name, samples in inputs.samples.items()}
    cpu = args.device == "cpu" or (args.device is None and not torch.cuda.is_available())
    state = PartialState(cpu=cpu)  # gloo on CPU when launched with several processes
    device = args.device or str(state.device)
    dtype = args.dtype or default_dtype(args.model, model_config)
    if config is not None:
        check_attention_window(args, model_config, encoded, inputs.max_new)
        config = dataclasses.replace(config, scoring=settle_scoring(args, config, model_config, encoded, device, dtype))
    return Job(inputs, encoded, config, state, device, dtype)


def check_device(name: str | None) -> None:
    """Refuse a --device that torch does not know, or does not find on this machine."""
    if name is None:
        return
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise UsageError(f"--device {name!r} is not a device torch knows; use cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return
    backend = getattr(torch, device.type, None)
    available = backend is not None and getattr(backend, "is_available", lambda: False)()
    count = getattr(backend, "device_count", lambda: 1)() if available else 0
    if count == 0:
        raise UsageError(f"--device {name}: torch {torch.__version__} finds no {device.type} device on this "
                         "machine; use --device cpu, or leave --device out")
    if device.index is not None and device.index >= count:
        raise UsageError(f"--device {name}: this machine has {count} {device.type} device(s), numbered from 0; "
                         "pick one of them")


def vatp_config(args):
    """The pruning settings the flags give (checked), or None for the full cache (--heavy_ratio 1)."""
    if args.heavy_ratio >= 1.0:
        return None
    try:
        return vatp.VatpConfig(heavy_ratio=args.heavy_ratio, method=method_name(args), apval=args.apval,
                               adakv=args.adakv, sink_len=args.sink_len, backend=args.backend, scoring=args.scoring,
                               score_dtype=args.score_dtype, compile=args.compile, value_norm=args.vnorm,
                               epsilon=args.vepsilon, two_stage=args.vstage)
    except ValueError as err:
        raise UsageError(str(err)) from None


def claim(args, job: Job, locks: contextlib.ExitStack) -> dict:
    """Rank 0 takes each dataset's lock (into ``locks``, for the whole run) and checks its predictions and run
    record, refusing another run, other settings or damaged files, and writing nothing. Returns rank 0's plans
    ({} on the other ranks). A dataset's record gains its session only when its predictions start."""
    plans = {}
    if job.state.is_main_process:
        settings = run_settings(args, job)
        uncompared = runs.UNCOMPARED | {"recent_ratio", "engine", "not_applying", *settings["not_applying"]}
        for name in job.inputs.samples:
            locks.enter_context(runs.RunLock(out_dir(args), name, settings, model_path=job.inputs.model_path,
                                             summary=describe(args), uncompared=uncompared))
        plans = {name: runs.check_run(out_dir(args), name, settings, model_path=job.inputs.model_path,
                                      overwrite=args.overwrite, ids=runs.sample_ids(samples), uncompared=uncompared)
                 for name, samples in job.inputs.samples.items()}
    job.state.wait_for_everyone()
    return plans


def run_settings(args, job: Job) -> dict:
    """Every flag, with the dtype, scoring and score dtype actually used, and the flags that do not apply. runs
    compares all of them but device(_map), limit, save, data_dir, datasets, overwrite, batch_size,
    trust_remote_code, recent_ratio (ignored, as in the paper's code) and those that do not apply."""
    import torch

    resolved = job.config or vatp.VatpConfig(backend=args.backend, scoring=args.scoring, score_dtype=args.score_dtype)
    return {**recorded_flags(args), "dtype": job.dtype, "scoring": resolved.resolved_scoring,
            "score_dtype": resolved.score_dtype_name(getattr(torch, job.dtype)), "not_applying": not_applying(args)}


# Flags added after runs were recorded, left out at their defaults: those runs still resume.
LATER_FLAGS = {"adakv": False, "compile": None, "engine": "generate", "vnorm": "l1", "vepsilon": 0.0, "vstage": 0.0}


def recorded_flags(args) -> dict:
    """The flags as a run record holds them: every flag but the later ones at their defaults."""
    return {k: v for k, v in vars(args).items() if k not in LATER_FLAGS or v != LATER_FLAGS[k]}


def load(args, job: Job):
    """The model (on its device, in its dtype) and its tokenizer."""
    from vatp.longbench.models import ModelLoadError, load_model_and_tokenizer

    seed_everything()
    try:
        model, tokenizer = load_model_and_tokenizer(job.inputs.model_path, job.dtype, job.device, args.device_map,
                                                    trust_remote_code=args.trust_remote_code)
    except ModelLoadError as err:
        raise UsageError(str(err)) from None
    print(f"pred.py: rank {job.state.process_index} of {job.state.num_processes}: {args.model} on {model.device} "
          f"({job.dtype}, {describe(args)})", file=sys.stderr, flush=True)
    return model, tokenizer


def predict(args, job: Job, model, tokenizer, plans: dict) -> None:
    """Predict every dataset with vatp enabled (unless the full cache), then leave the model as it was."""
    session = vatp.enable(model, job.config) if job.config is not None else None
    try:
        for name in job.inputs.samples:
            predict_dataset(args, job, name, model, tokenizer, session, plans.get(name))
    finally:
        if session is not None:
            vatp.disable(model)


def check_attention_window(args, model_config, encoded, max_new) -> None:
    """Refuse a model whose sliding window or attention chunks are shorter than a dataset's longest prompt
    plus its generation."""
    from vatp import refusals

    window = refusals.model_window(model_config)
    for name, prompts in encoded.items():
        if window is not None and prompts and max(ids.shape[1] for ids in prompts) + max_new[name] > window.size:
            raise UsageError(f"{args.model} attends {window.what}, shorter than {name}'s longest prompt plus its "
                             "generated tokens: vatp scores full attention, so its scores would not be the model's; "
                             f"set its model2maxlen <= {window.size - max_new[name]} or use a model that attends "
                             "every token")


def settle_scoring(args, config, model_config, encoded, device, dtype) -> str:
    """The prefill scoring to run: fused checked; the default eager replaced by chunked where it would not fit."""
    import torch

    from vatp import footprint

    scoring = config.resolved_scoring
    if scoring == "fused":
        if torch.device(device).type != "cuda":
            raise UsageError(f"--scoring fused runs on a CUDA GPU, not on {device}; use --scoring chunked")
        if importlib.util.find_spec("triton") is None:
            raise UsageError("--scoring fused needs triton: pip install triton, or use --scoring chunked")
    if args.scoring is None and scoring == "eager":
        longest = max(ids.shape[1] for prompts in encoded.values() for ids in prompts)
        most = max(len(prompts) for prompts in encoded.values())  # a batch never holds more
        scoring, reason = footprint.choose_scoring(model_config, longest, getattr(torch, dtype),
                                                   footprint.free_bytes(device), args.batch_size, samples=most)
        if reason:
            print(f"pred.py: {reason}", file=sys.stderr, flush=True)
    return scoring


def encode_dataset(args, name, samples, tokenizer, prompt_format, max_length, config) -> list:
    """Token ids (1, n) of every sample's prompt; raises if one is empty or leaves no cache budget."""
    ids = runs.sample_ids(samples)
    encoded = [encode_prompt(tokenizer, sample, name, prompt_format, args.model, max_length)
               for sample in samples]
    for i in sorted(range(len(samples)), key=lambda i: encoded[i].shape[1]):  # the shortest failing one first
        where = f"{name} sample {i} ({ids[i]}, {encoded[i].shape[1]} prompt tokens)"
        if encoded[i].shape[1] == 0:
            raise DataError(f"{where} gives an empty prompt; fix the data")
        if config is not None:
            try:
                config.budget(encoded[i].shape[1])
            except ValueError as err:  # vatp.BudgetError, with the fix
                raise UsageError(f"{where}: {err}") from None
    return encoded


def predict_dataset(args, job: Job, name: str, model, tokenizer, session, plan) -> None:
    """Predict the samples of ``name`` not done yet, then (rank 0) merge them; ``plan``: rank 0's checked run."""
    from tqdm import tqdm

    samples, encoded, max_new = job.inputs.samples[name], job.encoded[name], job.inputs.max_new[name]
    state, folder = job.state, out_dir(args)
    rank, world = state.process_index, state.num_processes
    ids = runs.sample_ids(samples)
    method = describe(args)
    started, new, kept = time.time(), 0, []
    if state.is_main_process:
        runs.begin_run(plan, num_processes=world, samples=job.inputs.sizes[name])  # before any rank opens its part
    state.wait_for_everyone()
    with runs.PredictionWriter(folder, name, rank, world) as writer:
        todo = [i for i in runs.shard_indices(len(samples), rank, world) if ids[i] not in writer.done]
        with tqdm(total=len(todo), desc=f"{name} [{method}]", unit="sample", disable=not state.is_main_process,
                  dynamic_ncols=True) as bar:  # closed before an interrupt's message
            if session is not None:
                for i in todo:
                    kept.append(min(session.budget(encoded[i].shape[1]).total, encoded[i].shape[1]) / encoded[i].shape[1])
            if args.engine == "cb":
                answers = engine_answers(model, tokenizer, name, max_new, {i: encoded[i] for i in todo},
                                         args.batch_size)
            else:
                answers = batch_answers(model, tokenizer, name, max_new, todo, encoded, args.batch_size)
            for i, pred in answers:
                writer.write(runs.prediction_record(post_process(pred, args.model), samples[i], i, ids[i]))
                new += 1
                bar.set_postfix(prompt=encoded[i].shape[1])
                bar.update(1)
    state.wait_for_everyone()
    if state.is_main_process:
        final = runs.final_path(folder, name)
        count = runs.merge_parts(final, runs.part_paths(folder, name))
        runs.finish_run(folder, name, count)
        budget = f", mean budget {100 * sum(kept) / len(kept):.0f}% of the prompt" if kept else ""
        if count < len(samples):
            print(f"{name}: warning: only {count} of {len(samples)} samples predicted", file=sys.stderr)
        print(f"{name}: {count}/{len(samples)} predictions in {final} ({new} new on rank 0 of {world}, "
              f"{time.time() - started:.1f} s, {method}{budget})", flush=True)


def batch_answers(model, tokenizer, name: str, max_new: int, todo: list[int], encoded: list, size: int):
    """(sample index, answer) for ``todo``, generated ``size`` prompts at a time (:func:`generate_batch`)."""
    for batch in by_length(todo, encoded, size):
        yield from zip(batch, generate_batch(model, tokenizer, name, max_new, [encoded[i] for i in batch]))


def engine_answers(model, tokenizer, name: str, max_new: int, prompts: dict, size: int, block_size: int = 32):
    """(sample index, answer) as transformers' continuous batching finishes each of ``prompts`` (index: (1, n)),
    all queued at once; its pool holds ``size`` of the longest prompt whole with their new tokens."""
    from transformers import GenerationConfig

    settings = generation_kwargs(tokenizer, name, max_new, 0)
    stops = settings.get("eos_token_id", model.generation_config.eos_token_id)
    generation = GenerationConfig(max_new_tokens=max_new, do_sample=False, eos_token_id=stops,
                                  pad_token_id=settings["pad_token_id"])
    longest = max(ids.shape[1] for ids in prompts.values())
    config = vatp.engine_config(block_size=block_size, num_blocks=size * ((longest + max_new + 1) // block_size + 1),
                                max_batch_tokens=1024, max_requests_per_batch=len(prompts))
    manager = model.init_continuous_batching(generation, config)
    manager.start()
    try:
        index = {manager.add_request(ids[0].tolist(), request_id=f"sample_{i}", max_new_tokens=max_new): i
                 for i, ids in prompts.items()}
        for _ in index:
            out = manager.get_result(timeout=None)
            if out.error:
                raise RuntimeError(f"sample {index[out.request_id]}: {out.error}")
            yield index[out.request_id], decode(tokenizer, cut_at_stop(out.generated_tokens, stops))
    finally:
        manager.stop(block=True)


def generate_batch(model, tokenizer, name: str, max_new: int, prompts: list) -> list[str]:
    """The decoded answers to ``prompts`` (each (1, n)), generated together as one left-padded batch."""
    import torch

    settings = generation_kwargs(tokenizer, name, max_new, max(ids.shape[1] for ids in prompts))
    input_ids, mask = left_pad(prompts, settings["pad_token_id"])
    with torch.no_grad():
        output = model.generate(input_ids.to(model.device), attention_mask=mask.to(model.device), **settings)
    stops = settings.get("eos_token_id", model.generation_config.eos_token_id)
    return [decode(tokenizer, cut_at_stop(row[input_ids.shape[1]:], stops)) for row in output]


def by_length(todo: list[int], encoded: list, size: int) -> list[list[int]]:
    """``todo`` in batches of up to ``size`` samples of neighbouring prompt lengths (the least padding).

    One at a time, in dataset order, as the paper's code, when ``size`` is 1.
    """
    order = sorted(todo, key=lambda i: (encoded[i].shape[1], i)) if size > 1 else todo
    return [order[k:k + size] for k in range(0, len(order), size)]


def describe(args) -> str:
    if args.heavy_ratio >= 1.0:
        return "full cache"
    sinks = args.sink_len if args.apval or args.method == "streaming" else 0
    label = names.method_label(method_name(args), args.apval) + ("+AdaKV" if args.adakv else "")
    label += names.value_options(args.vnorm, args.vepsilon, args.vstage)
    return f"{label} r={args.heavy_ratio} sink={sinks} {'engine' if args.engine == 'cb' else args.backend}"


if __name__ == "__main__":
    sys.exit(main())
