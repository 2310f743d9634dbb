"""Exported models decode as benchmarked: generate() on final/ reproduces the benchmark's predictions."""
from __future__ import annotations

import json

from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from main import main


def test_exported_model_generates_exactly_the_benchmark_predictions(tiny_config_dict, write_config, tmp_path):
    cfg = tiny_config_dict
    cfg["data"]["prefix"] = "detoxify: "
    cfg["training"]["teacher"].update(max_steps=40, eval_every=40, learning_rate=1e-2)  # long enough to emit words
    cfg["benchmark"].update(num_beams=3, no_repeat_ngram_size=2, length_penalty=0.8, max_new_tokens=10,
                            bad_phrases=["the", "is"], batch_size=1, bootstrap_samples=0, latency_samples=0,
                            metrics=["rouge"])
    path, out = write_config(cfg), tmp_path / "run"
    assert main(["--mode", "train_teacher", "--config", str(path), "--output_dir", str(out)]) == 0
    final = out / "teacher" / "final"
    saved = json.loads((final / "generation_config.json").read_text())
    assert (saved["num_beams"], saved["no_repeat_ngram_size"], saved["length_penalty"], saved["max_new_tokens"]) \
        == (3, 2, 0.8, 10)
    assert saved["bad_words_ids"] and saved["min_length"] == 0

    bench = tmp_path / "bench"
    assert main(["--mode", "benchmark", "--config", str(path), "--output_dir", str(bench),
                 "--teacher_path", str(final)]) == 0
    rows = [json.loads(line) for line in (bench / "predictions_teacher.jsonl").read_text().splitlines()]

    # what the README tells a user to do: the plain Auto classes and generate(**inputs)
    model = AutoModelForSeq2SeqLM.from_pretrained(final).eval()
    tok = AutoTokenizer.from_pretrained(final)
    plain = []
    for r in rows:
        inputs = tok(["detoxify: " + r["source"]], return_tensors="pt")
        plain.append(tok.batch_decode(model.generate(**inputs), skip_special_tokens=True)[0].strip())
    assert any(plain) and plain == [r["prediction"] for r in rows]
    blocked = {tuple(ids) for ids in saved["bad_words_ids"]}
    for text in plain:  # the blocklist is in force: no blocked id sequence in any output
        ids = tok(text, add_special_tokens=False).input_ids
        assert not any(tuple(ids[i:i + len(b)]) == b for b in blocked for i in range(len(ids)))
