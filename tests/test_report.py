"""Reports: error rates by manifest field, S/D/I, changed utterances, the terminal table's width, ids in hypotheses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from stage_helpers import cli

from optimize import report
from optimize.errors import OptimizeError
from optimize.evaluate.breakdown import breakdown, changed, check_fields, length_bucket

REPO = Path(__file__).resolve().parents[1]
MODEL, EVAL = REPO / "artifacts" / "firered-aed-tiny", REPO / "calibration" / "eval"

REFS = ["今天天气很好", "THE CAT SAT ON THE MAT", "打开灯", "CALL ME LATER"]
HYPS = ["今天天汽很好", "THE CAT SAT ON MAT", "打开灯", "CALL ME LATER NOW"]
LANGS = ["zh", "en", "zh", "en"]
FIELDS = [{"lang": g, "noise": n, "length": length_bucket(s)} for g, n, s in zip(LANGS, ["white", "none", "none", "white"], [1.5, 3.0, 9.0, 70.0])]


def test_length_buckets():
    assert [length_bucket(s) for s in (0.5, 2.0, 7.9, 15.0, 59.9, 60.0)] == ["<2 s", "2-4 s", "4-8 s", "15-30 s", "30-60 s", ">=60 s"]


def test_breakdown_by_fields_with_substitutions_deletions_insertions():
    rows = {(r["field"], r["value"]): r for r in breakdown(REFS, HYPS, LANGS, FIELDS, ["noise", "length"])}
    white, none = rows[("noise", "white")], rows[("noise", "none")]
    assert white["utts"] == 2 and (white["substitutions"], white["deletions"], white["insertions"]) == (1, 0, 1)
    assert none["utts"] == 2 and (none["substitutions"], none["deletions"], none["insertions"]) == (0, 1, 0)
    assert white["rates"]["zh"] == pytest.approx(100 / 6) and white["rates"]["en"] == pytest.approx(100 / 3)
    assert [v for f, v in rows if f == "length"] == ["<2 s", "2-4 s", "8-15 s", ">=60 s"]  # bucket order, not alphabetical


def test_an_unknown_field_names_the_known_ones():
    with pytest.raises(OptimizeError, match=r"no manifest field 'room'.*length, noise"):
        check_fields(FIELDS, ["lang", "room"])


def test_changed_lists_reference_and_both_texts():
    got = changed(["a", "b", "c", "d"], REFS, HYPS, ["今天天气很好", *HYPS[1:]])
    assert got == [{"id": "a", "reference": REFS[0], "baseline": HYPS[0], "hypothesis": "今天天气很好"}]


def _row(name: str, **kw) -> report.Row:
    base = dict(error_rate=12.3456, delta_error_rate=0.5, token_agreement=0.987, rtf=0.123456, rtf_cpu=0.0123, speedup=1.23,
                size_mb=4321.5, error_counts={"substitutions": 1234, "deletions": 567, "insertions": 89, "ref_len": 99999})  # fmt: skip
    return report.Row(name, f"/tmp/{name}", passed=True, failures=[], **(base | kw))


def test_terminal_table_fits_100_columns_and_markdown_has_the_sections():
    from optimize.cli import WIDTH, _table

    rows = [_row("baseline"), _row("int8_weight_only", breakdown=None, changed=[{"id": "u7", "reference": "A B", "baseline": "A B", "hypothesis": "A C"}])]
    head = {"recipe": "r", "model": "m", "data": "d", "provider": "cpu", "target_provider": "cpu", "threads": 1, "evaluation": "full",
            "rtf_timed": "t", "speedup_basis": "cpu_rtf", "rtf_representative": True, "gates": {}, "passed": True, "final": None}  # fmt: skip
    data = head | {"stages": rows}
    text = _table(report.TERMINAL, report.table_rows(data, report.TERMINAL))
    assert max(len(line) for line in text.splitlines()) <= WIDTH and "1234/567/89" in text and "int8_weight_only" in text
    md = report.markdown(data)
    assert "### int8_weight_only: 1 utterance(s) changed" in md and "| u7 | A B | A B | A C |" in md
    assert "| S/D/I |" in md.splitlines()[6] or "S/D/I" in md  # the full table carries S/D/I too


@pytest.mark.skipif(not (MODEL / "encoder.onnx").is_file(), reason="the embedded default model is not in this checkout")
def test_eval_by_fields_and_ids_in_every_hypothesis(tmp_path):
    lines = (EVAL / "manifest.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    rows = [json.loads(line) | {"audio": str(EVAL / json.loads(line)["audio"])} for line in lines]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("stages: []\ngates: {max_error_rate_increase: 1, min_token_agreement: 0, min_speedup: 0.01}\nthreads: 1\n"
                      "decode: {beam_size: 1}\nevaluation: {warmup: 1}\n")  # fmt: skip
    out = tmp_path / "eval.json"
    result = cli("eval", MODEL, "--data", tmp_path / "m.jsonl", "--recipe", recipe, "--by", "lang,condition,length", "--json", out)
    assert result.exit_code == 0, result.stderr
    assert "condition" in result.stdout and "unseen_voice" in result.stdout and "S/D/I" in result.stdout
    saved = json.loads(out.read_text())
    assert [h["id"] for h in saved["metrics"]["hyps"]] == [r["id"] for r in rows]
    assert {b["field"] for b in saved["breakdown"]} == {"lang", "condition", "length"}
    assert sum(b["utts"] for b in saved["breakdown"] if b["field"] == "lang") == 6
    bad = cli("eval", MODEL, "--data", tmp_path / "m.jsonl", "--recipe", recipe, "--by", "room")
    assert bad.exit_code == 2 and "no manifest field 'room'" in bad.stderr
