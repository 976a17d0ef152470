"""Reproduction study: does value awareness help, and where? (the grid behind RESULTS.md)

    python scripts/study.py --out study_out                          # CPU: embedded model, 2 lengths
    python scripts/study.py --out study_gpu --tokens 4000 8000 --samples 20 --device cuda

For each context length it builds the offline suite, then runs pred.py and
eval.py for: the full cache; H2O, H2O+VATP, Scissorhands, Scissorhands+VATP
and a StreamingLLM-style baseline (sinks + recent) at budgets of 20%, 35% and
50% of the prompt (heavy_ratio = budget / 2). Finished runs are reused:
pred.py resumes a run, and one whose result.json is newer than its
predictions is skipped; ``--report_only`` runs nothing and reports the
finished points (missing ones are listed). Writes ``OUT/study.md`` (a table per length and
budget, and VATP's per-task win/tie/loss count against its baseline), a
report (``vatp.analysis.report``) per length and budget, and ``OUT/averages.png``
(average score against budget, per length).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

from vatp.analysis.report import load_run, markdown_table, write_report

TASKS = ["offline_qa", "offline_retrieval", "offline_count", "offline_code", "offline_classify"]
METHODS = {  # name -> (label, pred.py flags); VATP pairs with the method it weights
    "h2o": ("H2O", ["--h2o"]),
    "h2o_vatp": ("H2O+VATP", ["--h2o", "--apval"]),
    "scissorhands": ("Scissorhands", []),
    "scissorhands_vatp": ("Scissorhands+VATP", ["--apval"]),
    "streaming": ("StreamingLLM", ["--method", "streaming"]),
}
PAIRS = [("h2o", "h2o_vatp"), ("scissorhands", "scissorhands_vatp")]


def run(cmd: list[str]) -> None:
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


def predict(args, data: Path, save: Path, flags: list[str]) -> Path | None:
    """pred.py + eval.py for one grid point, unless its result is already there (None: not run)."""
    folder = save / args.model
    result = folder / "result.json"
    preds = [folder / f"{t}.jsonl" for t in TASKS]
    if result.is_file() and all(p.is_file() and p.stat().st_mtime <= result.stat().st_mtime for p in preds):
        return folder
    if args.report_only:
        return None
    run([sys.executable, "pred.py", "--model", args.model, "--data_dir", str(data), "--datasets", *TASKS,
         "--save", str(save), "--backend", args.backend, *(["--device", args.device] if args.device else []),
         *flags])
    run([sys.executable, "eval.py", "--model", args.model, "--save", str(save)])
    return folder


def win_loss(scores: dict, tokens: list[int], budgets: list[float]) -> list[str]:
    """Per task, VATP against its baseline: wins, ties, losses over all lengths and budgets."""
    lines = ["| pair | task | wins | ties | losses |", "|---|---|---|---|---|"]
    total = {}
    for base, vatp in PAIRS:
        for task in TASKS + ["Average"]:
            w = t = l = 0
            for n in tokens:
                for b in budgets:
                    x, y = scores.get((n, b, base), {}).get(task), scores.get((n, b, vatp), {}).get(task)
                    if x is None or y is None:
                        continue
                    w, t, l = w + (y > x), t + (y == x), l + (y < x)
            lines.append(f"| {METHODS[vatp][0]} vs {METHODS[base][0]} | {task} | {w} | {t} | {l} |")
            if task != "Average":
                total[base] = [a + c for a, c in zip(total.get(base, [0, 0, 0]), (w, t, l))]
        lines.append(f"| {METHODS[vatp][0]} vs {METHODS[base][0]} | **all tasks** | {total[base][0]} | "
                     f"{total[base][1]} | {total[base][2]} |")
    return lines


def averages_chart(scores: dict, tokens: list[int], budgets: list[float], path: Path) -> None:
    """Average score against budget, one panel per context length; the full cache as a black line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tokens), figsize=(5 * len(tokens) + 2, 3.8), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, n in zip(axes[0], tokens):
        for name, (label, _) in METHODS.items():
            pts = [(100 * b, scores[(n, b, name)]["Average"]) for b in budgets if (n, b, name) in scores]
            family = name.removesuffix("_vatp")  # a method and its VATP variant share a colour
            ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=label,
                    color={"h2o": "C0", "scissorhands": "C2", "streaming": "C4"}[family],
                    linestyle="-" if name.endswith("_vatp") else "--" if family != "streaming" else ":")
        if (n, 1.0, "full") in scores:
            ax.axhline(scores[(n, 1.0, "full")]["Average"], color="black", linewidth=1, label="Full cache")
        ax.set_title(f"~{n}-token contexts")
        ax.set_xlabel("KV budget, % of the prompt")
    axes[0][0].set_ylabel("average score")
    fig.legend(*axes[0][0].get_legend_handles_labels(), fontsize=8, loc="outside right center")
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="study_out")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--tokens", type=int, nargs="+", default=[1000, 2000], help="context lengths (approx. tokens)")
    p.add_argument("--samples", type=int, default=4, help="samples per task and length")
    p.add_argument("--budgets", type=float, nargs="+", default=[0.2, 0.35, 0.5], help="KV budget, share of the prompt")
    p.add_argument("--sink_len", type=int, default=20, help="sinks of VATP and StreamingLLM (the paper's 20)")
    p.add_argument("--backend", default="mask", choices=["mask", "evict"])
    p.add_argument("--device", default=None)
    p.add_argument("--report_only", action="store_true", help="run nothing; report the finished points")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    scores, sections, missing = {}, [], []
    for n in args.tokens:
        data = out / f"data_{n}"
        if not args.report_only:
            run([sys.executable, "-m", "vatp.longbench.suite", "--out", str(data), "--samples", str(args.samples),
                 "--tokens", str(n), "--tasks", *TASKS])
        full = predict(args, data, out / f"t{n}" / "full", ["--heavy_ratio", "1.0"])
        full_run = load_run("Full cache", full) if full else None
        if full_run:
            scores[(n, 1.0, "full")] = {**full_run.scores, "Average": full_run.average()}
        for b in args.budgets:
            runs = [full_run] if full_run else []
            for name, (label, flags) in METHODS.items():
                sink = ["--sink_len", str(args.sink_len)] if "--apval" in flags or name == "streaming" else []
                folder = predict(args, data, out / f"t{n}" / f"{name}_b{b}",
                                 ["--heavy_ratio", str(b / 2), *flags, *sink])
                if folder is None:
                    missing.append(f"{label} at ~{n} tokens, {round(100 * b)}% budget")
                    continue
                runs.append(load_run(label, folder))
                scores[(n, b, name)] = {**runs[-1].scores, "Average": runs[-1].average()}
            if not runs:
                continue
            write_report(runs, out / f"report_t{n}_b{b}")
            sections.append(f"### ~{n}-token contexts, {round(100 * b)}% budget\n\n{markdown_table(runs)}\n\n"
                            f"![chart](report_t{n}_b{b}/report.png)\n")
    if scores:
        averages_chart(scores, args.tokens, args.budgets, out / "averages.png")
    text = (f"# Study: {args.model}, {args.samples} samples per task and length, sink_len {args.sink_len}, "
            f"backend {args.backend}\n\nCommand: `python scripts/study.py {' '.join(argv or sys.argv[1:])}`\n\n"
            + ("![averages](averages.png)\n\n" if scores else "") + "\n".join(sections)
            + "\n### VATP against its baseline, per task (all lengths and budgets)\n\n"
            + "\n".join(win_loss(scores, args.tokens, args.budgets)) + "\n"
            + ("\nNot run: " + "; ".join(missing) + ".\n" if missing else ""))
    (out / "study.md").write_text(text)
    (out / "scores.json").write_text(json.dumps({f"{n}|{b}|{m}": s for (n, b, m), s in scores.items()}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
