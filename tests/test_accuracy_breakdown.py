"""benchmarks/accuracy_default.py's breakdown: every recorded condition becomes a table, buckets in order."""

import importlib.util
from pathlib import Path

import pytest

from optimize.corpus.manifest import Utterance

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy_default.py"


def _script():
    spec = importlib.util.spec_from_file_location("accuracy_default", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _utt(text, lang, duration, **extra):
    return Utterance(Path("/x.ogg"), text, lang, duration, extra)


def test_breakdown_per_condition_length_and_decode():
    acc = _script()
    utts = [
        _utt("HELLO THERE", "en", 2.0, condition="base", rt60=None, hum_hz=None, snr_db=None, channel="wide", rate=150, sentences=1),
        _utt("你好", "zh", 13.0, condition="reverb", rt60=0.7, hum_hz=50, snr_db=6.0, channel="telephone", rate=230, sentences=4),
        _utt("GOOD NIGHT", "en", 5.0, condition="base", rt60=None, hum_hz=None, snr_db=18.0, channel="wide", rate=120, sentences=2),
    ]  # fmt: skip
    decodes = {"greedy": ["HELLO THERE", "你", "GOOD"], "beam 3": ["HELLO THERE", "你好", "GOOD NIGHT"]}
    tables = acc.breakdown(utts, [u.text for u in utts], [u.lang for u in utts], decodes)
    assert tables["set"]["all"]["greedy"]["mixed"] == 33.33 and tables["set"]["all"]["beam 3"]["mixed"] == 0
    assert tables["condition"]["reverb"]["greedy"] == {"zh": 50.0, "en": None, "mixed": 50.0}
    assert list(tables["length"]) == ["0-4 s", "4-8 s", "12-16 s"]  # numeric order, empty buckets absent
    assert tables["length"]["12-16 s"]["utts"] == 1 and tables["length"]["4-8 s"]["minutes"] == round(5 / 60, 2)
    assert set(tables["room"]) == {"dry", ">= 0.6 s RT60"} and set(tables["hum"]) == {"no Hz", "50 Hz"}
    assert list(tables["snr"]) == ["0-10 dB", "15-20 dB", "(none)"] and set(tables["channel"]) == {"wide", "telephone"}
    assert list(tables["rate"]) == ["0-140 wpm", "140-170 wpm", ">= 200 wpm"]
    text = acc.markdown("length", tables["length"], list(decodes))
    assert text.splitlines()[0].startswith("| length | utts | min | greedy zh CER %") and "| 12-16 s | 1 | 0.2 |" in text


def test_breakdown_of_a_manifest_without_conditions():
    """A plain manifest (audio, text, lang, duration only) still gets the set and length tables."""
    acc = _script()
    utts = [_utt("HELLO", "en", 1.0), _utt("HELLO", "en", 9.0)]
    tables = acc.breakdown(utts, ["HELLO", "HELLO"], ["en", "en"], {"greedy": ["HELLO", "HI"]})
    assert set(tables) == {"set", "length"}
    assert tables["length"]["8-12 s"]["greedy"]["en"] == 100.0


def test_vad_option_sets_config_fields_and_refuses_bad_pairs():
    acc = _script()
    failures = []

    def fail(message):
        failures.append(message)
        raise SystemExit(2)

    cfg = acc.vad_config(["above=0", "pad=0.4", "step_db=0"], fail)
    assert (cfg.above, cfg.pad, cfg.step_db, cfg.min_silence) == (0.0, 0.4, 0.0, acc.VadConfig().min_silence)
    for bad in (["abvoe=0"], ["pad=wide"], ["threshold=1.5"]):
        with pytest.raises(SystemExit):
            acc.vad_config(bad, fail)
    assert len(failures) == 3 and all("\n" not in f for f in failures)
    assert "abvoe=0" in failures[0] and "above" in failures[0] and "pad=wide" in failures[1] and "threshold=1.5" in failures[2]


def test_ctc_weight_adds_a_joint_decode_and_refuses_a_pair_without_the_head(default_pair_v2, tiny_pair, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    root = Path(__file__).resolve().parents[1] / "calibration" / "eval"
    data = tmp_path / "two"
    (data / "audio").mkdir(parents=True)
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines()[:2]]
    for row in rows:
        shutil.copy(root / row["audio"], data / row["audio"])
    (data / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    acc = _script()
    monkeypatch.setattr("sys.argv", ["accuracy_default.py", str(default_pair_v2), str(data), "--ctc-weight", "0.4", "--json", str(tmp_path / "out.json")])
    acc.main()
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out["tables"]["set"]["all"]) >= {"greedy", "beam 3", "beam 3 ctc 0.4"}
    assert all(set(h) == {"greedy", "beam 3", "beam 3 ctc 0.4"} for h in out["hyps"].values())
    monkeypatch.setattr("sys.argv", ["accuracy_default.py", str(tiny_pair), str(data), "--ctc-weight", "0.4"])
    with pytest.raises(SystemExit) as exit_info:
        acc.main()
    assert exit_info.value.code == 2 and "no ctc_log_probs output" in capsys.readouterr().err
