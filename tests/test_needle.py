"""vatp.analysis.needle: prompt building, scoring, resuming and the heatmaps, on a tiny random Llama.

A character-level stand-in tokenizer keeps these tests fast and independent of
the embedded model: one token per character, so lengths and offsets are exact.
"""
import json

import matplotlib.image
import numpy as np
import pytest

from conftest import tiny_llama
from vatp.analysis import needle
from vatp.longbench import models

MODEL = "smollm2-135m-instruct"  # the CLI's default name; the stand-in tokenizer has no chat template
BOS = 1


class CharTokenizer:
    """One token per ASCII character (ids < 128, the tiny Llama's vocabulary); others read as '?'."""

    pad_token_id, eos_token_id, chat_template = 0, None, None

    def encode(self, text, add_special_tokens=True):
        return [BOS] * add_special_tokens + [ord(c) if ord(c) < 128 else ord("?") for c in text]

    def decode(self, ids, skip_special_tokens=True, clean_up_tokenization_spaces=False):
        return "".join(chr(i) for i in ids if i > BOS)


@pytest.fixture(scope="module")
def tok():
    return CharTokenizer()


@pytest.fixture(scope="module")
def haystack(tok):
    return needle.encode_filler(tok)


def needle_ids(tok, prompt):
    return tok.encode(" " + needle.needle_sentence(prompt.value), add_special_tokens=False)


@pytest.mark.parametrize("length", [900, 2000, 3001])
def test_prompt_has_the_requested_length_and_ends_with_the_question(tok, haystack, length):
    prompt = needle.build_prompt(tok, haystack, MODEL, length, 40)
    assert prompt.ids.shape == (1, length)
    text = tok.decode(prompt.ids[0].tolist())
    assert text.startswith(needle.INSTRUCTION) and text.endswith(needle.QUESTION)
    assert text.count(prompt.value) == 1


def test_needle_sits_at_the_requested_depth(tok, haystack):
    length = 3000
    prompts = {d: needle.build_prompt(tok, haystack, MODEL, length, d) for d in range(0, 101, 10)}
    for prompt in prompts.values():
        ids = prompt.ids[0].tolist()
        planted = needle_ids(tok, prompt)
        assert ids[prompt.needle_at:prompt.needle_at + len(planted)] == planted
    start, end = prompts[0].context
    assert prompts[0].needle_at == start  # 0%: first in the context
    assert prompts[100].needle_at + len(needle_ids(tok, prompts[100])) == end  # 100%: last in the context
    filler = end - start - len(needle_ids(tok, prompts[50]))
    longest = max(len(s) for s in haystack[:60])  # the haystack's first sentences fill this context
    for depth, prompt in prompts.items():
        assert abs(prompt.needle_at - start - depth / 100 * filler) <= longest / 2, depth
    at = [p.needle_at for p in prompts.values()]
    assert at == sorted(at)


def test_needle_goes_between_sentences(tok, haystack):
    prompt = needle.build_prompt(tok, haystack, MODEL, 3000, 50)
    before = tok.decode(prompt.ids[0, :prompt.needle_at].tolist())
    assert before.rstrip()[-1] in ".!?"  # a sentence of the haystack ends right before it


def test_values_are_fixed_per_prompt_and_differ_between_prompts():
    values = {needle.needle_value(n, d) for n in (1000, 2000) for d in range(0, 101, 10)}
    assert needle.needle_value(1000, 30) == needle.needle_value(1000, 30)
    assert len(values) >= 20 and all(len(v) == 5 and v.isdigit() for v in values)


def test_a_length_too_short_for_the_question_is_refused(tok, haystack):
    with pytest.raises(ValueError, match="too short"):
        needle.build_prompt(tok, haystack, MODEL, 100, 50)


@pytest.mark.parametrize("answer, expected", [("The secret number is 48213.", 1), ("48213", 1), ("4821", 0),
                                              ("48 213", 0), ("", 0)])
def test_score(answer, expected):
    assert needle.score(answer, "48213") == expected


def test_variants_and_their_settings():
    grid = needle.NeedleGrid(budgets=(0.5, 0.2))
    assert grid.columns() == ["Full cache", "H2O", "H2O+VATP", "Scissorhands", "Scissorhands+VATP", "StreamingLLM",
                              "SnapKV", "SnapKV+VATP"]
    variants = grid.variants()
    assert len(variants) == 1 + 2 * 7
    by_label = {(v.label, v.budget): v.settings(20, "evict") for v in variants if v.method}
    assert by_label[("H2O", 0.2)] == {"method": "h2o", "apval": False, "heavy_ratio": 0.1, "sink_len": 0,
                                      "backend": "evict"}
    assert by_label[("SnapKV+VATP", 0.5)]["sink_len"] == 20 and by_label[("SnapKV+VATP", 0.5)]["heavy_ratio"] == 0.25
    assert by_label[("StreamingLLM", 0.5)]["sink_len"] == 20


def test_a_value_term_adds_a_vatp_variant_beside_the_papers_and_pairs_it_with_both():
    """Made-up answers at one length: SnapKV finds depth 0, the paper's VATP depths 0 and 50, VATP with the
    projected value every depth."""
    grid = needle.NeedleGrid(lengths=(1000,), depths=(0, 50, 100), budgets=(0.5,), methods=("snapkv",),
                             value_term=("wo_l1", 0.01, 0.0))
    assert grid.columns() == ["Full cache", "SnapKV", "SnapKV+VATP", "SnapKV+VATP[wo_l1, eps=0.01]"]
    other = grid.variants()[-1]
    assert other.settings(20, "evict") == {"method": "snapkv", "apval": True, "heavy_ratio": 0.25, "sink_len": 20,
                                           "backend": "evict", "value_norm": "wo_l1", "epsilon": 0.01,
                                           "two_stage": 0.0}
    found = {"SnapKV": (1, 0, 0), "SnapKV+VATP": (1, 1, 0), "SnapKV+VATP[wo_l1, eps=0.01]": (1, 1, 1)}
    results = [{"label": label, "budget": 0.5, "length": 1000, "depth": d, "score": score}
               for label, scores in found.items() for d, score in zip((0, 50, 100), scores)]
    labels = {label: round(c["1000 tokens"].mean, 2) for label, c in needle.vatp_comparisons(results, grid)}
    assert labels == {"SnapKV+VATP vs SnapKV, 50% budget": 33.33,
                      "SnapKV+VATP[wo_l1, eps=0.01] vs SnapKV+VATP, 50% budget": 33.33,
                      "SnapKV+VATP[wo_l1, eps=0.01] vs SnapKV, 50% budget": 66.67}
    with pytest.raises(ValueError, match="epsilon must be"):
        needle.NeedleGrid(value_term=("l1", -1.0, 0.0))


@pytest.mark.parametrize("bad", [{"depths": (0, 110)}, {"budgets": (1.0,)}, {"methods": ("nope",)},
                                 {"backend": "nope"}, {"lengths": ()}])
def test_grid_rejects_bad_settings(bad):
    with pytest.raises(ValueError):
        needle.NeedleGrid(**bad)


GRID = needle.NeedleGrid(lengths=(500, 400), depths=(0, 100), budgets=(0.5,), methods=("h2o", "streaming"),
                         max_new_tokens=2)
RUN = {"model": "tiny", "dtype": "float32", "sink_len": 20, "max_new_tokens": 2}


@pytest.fixture(scope="module")
def finished(tmp_path_factory, tok):
    """results.jsonl of the whole small grid, run on a tiny random Llama."""
    path = tmp_path_factory.mktemp("needle") / needle.RESULTS
    needle.run_points(tiny_llama(), tok, "tiny", GRID, needle.pending(GRID, []), path, RUN)
    return path


def test_run_writes_one_line_per_point(finished):
    results = needle.read_results(finished)
    assert len(results) == 2 * 2 * 4  # lengths x depths x (full, H2O, H2O+VATP, StreamingLLM)
    assert [r["length"] for r in results] == sorted(r["length"] for r in results)  # shortest first
    keys = {needle.point_key(r["label"], r["budget"], r["length"], r["depth"]) for r in results}
    assert len(keys) == len(results)
    for r in results:
        assert r["score"] in (0, 1) and r["prompt_tokens"] == r["length"] and r["model"] == "tiny"
        assert r["score"] == needle.score(r["answer"], r["value"])
    assert needle.pending(GRID, results) == []


def test_resume_skips_finished_points_and_survives_a_half_written_line(finished, tmp_path, tok):
    path = tmp_path / needle.RESULTS
    lines = finished.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-2]) + lines[-2][:25])  # killed while writing the second to last line
    assert len(needle.read_results(path)) == len(lines) - 2  # reading ignores the partial line
    assert needle.drop_partial_line(path) and not needle.drop_partial_line(path)
    results = needle.read_results(path)
    todo = needle.pending(GRID, results)
    expected = [(json.loads(x)["length"], json.loads(x)["depth"], json.loads(x)["label"]) for x in lines[-2:]]
    assert [(n, d, v.label) for n, d, v in todo] == expected
    needle.run_points(tiny_llama(), tok, "tiny", GRID, todo, path, RUN)
    again = needle.read_results(path)
    assert len(again) == len(lines) and needle.pending(GRID, again) == []
    assert all(line.endswith("\n") and json.loads(line) for line in path.read_text().splitlines(keepends=True))


RESULT = {"label": "H2O", "budget": 0.5, "length": 400, "depth": 0, "score": 1}


def test_a_broken_line_inside_the_file_is_reported(tmp_path):
    path = tmp_path / needle.RESULTS
    path.write_text(f'{json.dumps(RESULT)}\nnot json\n{json.dumps(RESULT)}\n')
    with pytest.raises(ValueError, match=":2 is not a JSON line"):
        needle.read_results(path)


def test_a_write_cut_inside_a_character_is_a_partial_line(tmp_path):
    path = tmp_path / needle.RESULTS
    path.write_bytes(f"{json.dumps(RESULT)}\n".encode() + '{"label": "é'.encode()[:-1])  # half of é's two bytes
    assert needle.read_results(path) == [RESULT]


def test_results_of_other_settings_are_refused(finished):
    results = needle.read_results(finished)
    needle.check_same_run(results, RUN)
    with pytest.raises(ValueError, match="sink_len: 20 -> 4"):
        needle.check_same_run(results, {**RUN, "sink_len": 4})


def test_score_grid_places_each_result_and_leaves_the_rest_blank():
    results = [{"label": "H2O", "budget": 0.5, "length": 1000, "depth": 0, "score": 1},
               {"label": "H2O", "budget": 0.2, "length": 2000, "depth": 50, "score": 0},
               {"label": "Full cache", "budget": 1.0, "length": 2000, "depth": 0, "score": 1}]
    cells = needle.score_grid(results, "H2O", 0.2, [1000, 2000], [0, 50])
    np.testing.assert_array_equal(cells, [[np.nan, np.nan], [np.nan, 0.0]])
    full = needle.score_grid(results, "Full cache", 0.2, [1000, 2000], [0, 50])  # any budget's row
    np.testing.assert_array_equal(full, [[np.nan, 1.0], [np.nan, np.nan]])


def test_figure_has_a_panel_per_method_and_budget(finished):
    results = needle.read_results(finished)
    columns = GRID.columns()
    fig = needle.heatmap_figure(results, columns, [0.2, 0.5], "title")
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 2 * len(columns) and len(fig.axes) == len(panels) + 1  # one shared colour bar
    titles = [ax.get_title() for ax in panels]
    assert [t.split("\n")[0] for t in titles] == columns * 2
    assert "50% budget" in titles[1] and "20% budget" in titles[len(columns) + 1]  # 50% first
    assert "no results" in titles[len(columns) + 1]  # nothing was run at 20%
    images = [ax.get_images()[0] for ax in panels]
    assert {im.get_clim() for im in images} == {(0.0, 1.0)}
    assert images[0].get_array().shape == (2, 2)  # depths x lengths


def test_tables_count_needles_and_pair_vatp_with_its_method():
    """Made-up answers: H2O finds the needle at depth 0 of both lengths; H2O+VATP at every depth of 1000
    tokens and depth 0 of 2000, where its depth 100 is still missing (so only 1000 tokens is paired)."""
    grid = needle.NeedleGrid(lengths=(1000, 2000), depths=(0, 100), budgets=(0.5,), methods=("h2o",))
    found = {("Full cache", 1.0): {(1000, 0): 1, (1000, 100): 1, (2000, 0): 1, (2000, 100): 1},
             ("H2O", 0.5): {(1000, 0): 1, (1000, 100): 0, (2000, 0): 1, (2000, 100): 0},
             ("H2O+VATP", 0.5): {(1000, 0): 1, (1000, 100): 1, (2000, 0): 1}}
    results = [{"label": label, "budget": budget, "length": n, "depth": d, "score": score}
               for (label, budget), cells in found.items() for (n, d), score in cells.items()]
    text = needle.needle_markdown(results, grid, "title")
    assert "| Full cache | 100% | 2 / 2 | 2 / 2 | 4 / 4 |" in text
    assert "| H2O | 50% | 1 / 2 | 1 / 2 | 2 / 4 |" in text
    assert "| H2O+VATP | 50% | 2 / 2 | 1 / 1 | 3 / 3 |" in text
    (label, comparison), = needle.vatp_comparisons(results, grid)
    assert label == "H2O+VATP vs H2O, 50% budget" and list(comparison) == ["1000 tokens", "Average"]
    assert comparison["1000 tokens"].mean == 50.0  # depth 100 found by VATP alone: (0 + 100) / 2
    assert comparison["1000 tokens"].low == 0.0 and comparison["1000 tokens"].high == 100.0
    assert "| H2O+VATP vs H2O, 50% budget | +50.00 [+0.00, +100.00] tie | +50.00 [+0.00, +100.00] tie |" in text


def test_command_runs_resumes_without_loading_the_model_and_draws(tmp_path, tok, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda *a, **k: (tiny_llama(), tok))
    args = ["--out", str(tmp_path), "--lengths", "400", "--depths", "0", "100", "--budgets", "0.5",
            "--methods", "h2o", "--max_new_tokens", "2"]
    assert needle.main(args) == 0
    assert len(needle.read_results(tmp_path / needle.RESULTS)) == 2 * 3
    figure = tmp_path / needle.FIGURE
    assert "| H2O+VATP vs H2O, 50% budget |" in (tmp_path / needle.TABLE).read_text()
    height, width = matplotlib.image.imread(figure).shape[:2]
    assert width > height > 100
    figure.unlink()

    def refuse(*a, **k):
        raise AssertionError("the model was loaded with nothing left to run")

    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)
    assert needle.main(args) == 0
    assert "0 points to run, 6 already" in capsys.readouterr().out and figure.is_file()
    assert needle.main([*args, "--sink_len", "4"]) == 2
    assert "other settings" in capsys.readouterr().err


# --- issue 28: repeated flags, foreign result lines, links, Ctrl-C: one line, nothing changed -------

CLI = ["--lengths", "400", "--depths", "0", "100", "--budgets", "0.5", "--methods", "h2o", "--max_new_tokens", "2"]


def files(folder):
    """Every file and link under ``folder``: its bytes, or ("link", target)."""
    return {str(p.relative_to(folder)): ("link", str(p.readlink())) if p.is_symlink() else p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_symlink() or p.is_file()}


@pytest.fixture
def no_model(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("the model was loaded")
    monkeypatch.setattr(models, "load_model_and_tokenizer", refuse)


def one_error(capsys, prefix="needle: error: ") -> str:
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(prefix), err
    return err[0]


@pytest.mark.parametrize("flag, values, repeated", [("--depths", ["50", "50"], "50"),
                                                    ("--lengths", ["400", "500", "400"], "400"),
                                                    ("--budgets", ["0.5", "0.5"], "0.5"),
                                                    ("--methods", ["h2o", "snapkv", "h2o"], "h2o")])
def test_a_repeated_value_is_refused(tmp_path, capsys, no_model, flag, values, repeated):
    """--depths 50 50 ran each point twice, counted "2 / 2" and dropped the VATP comparison without a word."""
    assert needle.main(["--out", str(tmp_path / "out"), *CLI, flag, *values]) == 2  # (the last --flag counts)
    assert one_error(capsys) == (f"needle: error: {flag} repeats {repeated}: each point would run twice and count "
                                 "twice; give each value once")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, problem", [("[1, 2]", "list, not an object"),
                                           (json.dumps({k: v for k, v in RESULT.items() if k != "label"}),
                                            'no "label"'),
                                           (json.dumps({**RESULT, "depth": "0"}), '"depth" is "0"'),
                                           (json.dumps({**RESULT, "score": True}), '"score" is true')])
def test_a_line_that_is_not_a_result_is_one_line_and_changes_nothing(tmp_path, capsys, no_model, line, problem):
    out = tmp_path / "out"
    out.mkdir()
    (out / needle.RESULTS).write_text(f"{json.dumps(RESULT)}\n{line}\n{{\"label\": \"H2")  # and a cut last line
    before = files(tmp_path)
    assert needle.main(["--out", str(out), *CLI]) == 2
    assert one_error(capsys) == (f"needle: error: {out / needle.RESULTS}:2 is not a result line ({problem}); "
                                 "remove that line to resume")
    assert files(tmp_path) == before  # the cut last line is not dropped either


def test_a_linked_results_file_is_refused_and_its_target_kept(tmp_path, capsys, no_model):
    out, target = tmp_path / "out", tmp_path / "notes.txt"
    out.mkdir()
    target.write_text("my notes, no newline")
    (out / needle.RESULTS).symlink_to(target)
    before = files(tmp_path)
    assert needle.main(["--out", str(out), *CLI]) == 2
    assert one_error(capsys).startswith(f"needle: error: {out / needle.RESULTS}: a symbolic link to {target} ")
    assert files(tmp_path) == before


def test_ctrl_c_is_one_line_and_a_rerun_resumes(tmp_path, tok, monkeypatch, capsys):
    monkeypatch.setattr(models, "load_model_and_tokenizer", lambda *a, **k: (tiny_llama(), tok))
    real, calls = needle.answer, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(needle, "answer", interrupted)
    args = ["--out", str(tmp_path), *CLI]
    assert needle.main(args) == 130
    assert one_error(capsys, "needle: interrupted: ") == (
        f"needle: interrupted: 1 result kept in {tmp_path / needle.RESULTS}; rerun the same command to resume")
    monkeypatch.setattr(needle, "answer", real)
    assert needle.main(args) == 0
    assert "5 points to run, 1 already" in capsys.readouterr().out
    assert len(needle.read_results(tmp_path / needle.RESULTS)) == 6
