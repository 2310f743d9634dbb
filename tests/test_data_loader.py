"""Tests for data_loader: real files in ../shared, format round trips, cleaning, splitting, batching."""
import os

# Before anything imports datasets/transformers/huggingface_hub: they read these at import time.
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_var] = "1"

import json
import logging
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import data_loader as dl  # noqa: E402
from settings import DataConfig, SyntheticConfig  # noqa: E402
from utils.errors import UserError

SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
T5_DIR = SHARED / "tokenizers" / "t5"
needs_shared = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared data not found at {DATA} (../shared is absent)")
PARADETOX = DATA / "paradetox" / "paradetox.tsv"
NEWS = DATA / "news_summary" / "news_summary_head499.csv"
NEUTRAL = ["neutral1", "neutral2", "neutral3"]


def all_examples(splits):
    return splits.train + splits.validation + splits.test


def assert_disjoint(splits):
    sets = [{e.source for e in getattr(splits, n)} for n in ("train", "validation", "test")]
    assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])


def write_table(tmp_path, name, rows, columns=("source", "target")):
    path = tmp_path / name
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    return path


# --------------------------------------------------------------------------- real data
@pytest.fixture(scope="module")
def paradetox_splits():
    if not PARADETOX.is_file():
        pytest.skip(f"{PARADETOX} not found (../shared is absent)")
    return dl.load_splits(DataConfig(train_file=str(PARADETOX), source_column="toxic", target_column=NEUTRAL))


@needs_shared
def test_paradetox_raw_counts_match_readme():
    df = dl.read_table(PARADETOX)
    assert list(df.columns) == ["toxic"] + NEUTRAL
    assert len(df) == 11_927 and df["toxic"].nunique() == 11_927  # every toxic sentence is on one row
    assert int(df[NEUTRAL].notna().sum().sum()) == 19_743  # README's "pairs": non-empty reference cells
    # quoted newlines survive: 7 fields hold 8 newlines (the README says 6 fields)
    assert df.apply(lambda c: c.str.contains("\n", na=False)).sum().sum() == 7
    assert df.apply(lambda c: c.str.count("\n").fillna(0)).sum().sum() == 8


@needs_shared
def test_paradetox_examples_and_pairs(paradetox_splits):
    exs = all_examples(paradetox_splits)
    assert len(exs) == 11_927 and len({e.source for e in exs}) == 11_927
    assert_disjoint(paradetox_splits)
    # 513 rows repeat a reference in two columns (e.g. neutral1 == neutral2); each source keeps
    # its distinct references only, so 19,743 reference cells give 19,230 training pairs.
    assert len(dl.training_pairs(exs, all_references=True)) == 19_230
    assert len(dl.training_pairs(exs, all_references=False)) == 11_927
    assert sum(len(getattr(paradetox_splits, n)) for n in ("train", "validation", "test")) == 11_927
    assert [len(paradetox_splits.train), len(paradetox_splits.validation), len(paradetox_splits.test)] == \
        [9_541, 1_193, 1_193]


@needs_shared
def test_paradetox_first_reference_is_neutral1(paradetox_splits):
    df = dl.read_table(PARADETOX)
    first = dict(zip(df["toxic"].str.strip(), df["neutral1"].str.strip()))
    assert all(first[e.source] == e.references[0] for e in all_examples(paradetox_splits))


@needs_shared
@pytest.mark.parametrize("name, rows, examples", [("test.jsonl", 1000, 999), ("test-tiny.jsonl", 50, 50)])
def test_xsum(name, rows, examples):
    path = DATA / "xsum" / name
    df = dl.read_table(path)
    assert list(df.columns) == ["id", "document", "summary"] and len(df) == rows
    assert df["id"].iloc[0] == "38295789"  # ids stay text
    splits = dl.load_splits(DataConfig(train_file=str(path), source_column="document", target_column="summary"))
    # test.jsonl has one row (id 32556640) whose document is empty: it is dropped
    assert len(all_examples(splits)) == examples
    assert_disjoint(splits)


@needs_shared
def test_cnn_dailymail():
    path = DATA / "cnn_dailymail" / "train_sample_100.csv"
    df = dl.read_table(path)
    assert list(df.columns) == ["Unnamed: 0", "id", "article", "highlights"] and len(df) == 100
    splits = dl.load_splits(DataConfig(train_file=str(path), source_column="article", target_column="highlights"))
    assert len(all_examples(splits)) == 100


@needs_shared
def test_news_summary_needs_cp1252():
    with pytest.raises(UserError) as e:
        dl.read_table(NEWS)
    msg = str(e.value)
    assert msg == (f"{NEWS} is not valid utf-8 (byte 0xe2 at position 29443, line 13); "
                   f"set data.encoding, e.g. cp1252")
    cfg = DataConfig(train_file=str(NEWS), source_column="ctext", target_column="text")
    with pytest.raises(UserError, match="set data.encoding, e.g. cp1252"):
        dl.load_splits(cfg)


@needs_shared
def test_news_summary_cp1252(caplog):
    df = dl.read_table(NEWS, encoding="cp1252")
    assert list(df.columns) == ["author", "date", "headlines", "read_more", "text", "ctext"] and len(df) == 499
    assert int((df["text"].notna() & df["ctext"].notna()).sum()) == 494
    cfg = DataConfig(train_file=str(NEWS), source_column="ctext", target_column="text", encoding="cp1252")
    with caplog.at_level(logging.INFO, logger="kd"):
        splits = dl.load_splits(cfg)
    exs = all_examples(splits)
    # 494 usable rows, but 15 of them repeat 5 articles with different summaries: 484 examples
    assert len(exs) == 484 and len(dl.training_pairs(exs, True)) == 494
    assert_disjoint(splits)
    assert "kept 494 of 499 rows; dropped 5 with an empty source ('ctext')" in caplog.text


# --------------------------------------------------------------------------- formats
ROWS = [{"id": 1, "source": "a b", "target": "x"}, {"id": 2, "source": "c", "target": None},
        {"id": 3, "source": "NA", "target": "null"}]


@pytest.mark.parametrize("ext", ["csv", "tsv", "json", "jsonl", "parquet"])
def test_round_trip(tmp_path, ext):
    df = pd.DataFrame(ROWS)
    path = tmp_path / f"data.{ext}"
    if ext in ("csv", "tsv"):
        df.to_csv(path, index=False, sep="\t" if ext == "tsv" else ",")
    elif ext == "json":
        path.write_text(json.dumps(ROWS))
    elif ext == "jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        df.to_parquet(path)
    got = dl.read_table(path)
    assert list(got.columns) == ["id", "source", "target"]
    assert all(pd.api.types.is_string_dtype(got[c]) for c in got.columns)
    assert got["id"].tolist() == ["1", "2", "3"]
    assert got["source"].tolist() == ["a b", "c", "NA"]  # "NA" is text, not missing
    assert got["target"].iloc[0] == "x" and pd.isna(got["target"].iloc[1]) and got["target"].iloc[2] == "null"


def test_json_variants(tmp_path):
    p = tmp_path / "cols.json"
    pd.DataFrame(ROWS).to_json(p)  # pandas' default layout {column: {index: value}}
    assert dl.read_table(p)["source"].tolist() == ["a b", "c", "NA"]
    p = tmp_path / "wrapped.json"
    p.write_text(json.dumps({"data": ROWS}))
    assert len(dl.read_table(p)) == 3
    p = tmp_path / "lines.json"  # JSON lines under a .json name
    p.write_text("\n".join(json.dumps(r) for r in ROWS))
    assert len(dl.read_table(p)) == 3
    p = tmp_path / "refs.jsonl"  # a list column gives several references
    p.write_text(json.dumps({"source": "s", "target": ["r1", " ", "r2"]}) + "\n")
    splits = dl.load_splits(DataConfig(train_file=str(p)))
    assert splits.train == [dl.Example("s", ["r1", "r2"])]


def test_explicit_format_and_bom(tmp_path):
    p = tmp_path / "data.txt"
    p.write_bytes("\ufeffsource,target\nhi,there\n".encode("utf-8"))
    assert list(dl.read_table(p, fmt="csv").columns) == ["source", "target"]  # BOM not in the name
    with pytest.raises(UserError, match=r"cannot tell the format .* '\.txt'.*set data\.format"):
        dl.read_table(p)


@pytest.mark.parametrize("name, content, pattern", [
    ("bad.json", '[{"source": "a", "target": }]', r"malformed JSON at line 1, column 28: Expecting value"),
    ("bad.jsonl", '{"source": "a"}\n{"source": \n', r"malformed JSON on line 2"),
    ("scalar.json", "42", r"expected a JSON array of objects"),
    ("empty.csv", "", r"is empty \(0 bytes\); check data.train_file"),
    ("blank.jsonl", "\n\n", r"is empty"),
    ("blank.csv", "\n\n", r"is empty"),
    ("header.csv", "source,target\n", r"has no data rows \(columns: 'source', 'target'\)"),
    ("ragged.csv", "source,target\na,b\nc,d,e\n", r"cannot read it as CSV \(.*Expected 2 fields in line 3"),
])
def test_read_errors_are_one_line(tmp_path, name, content, pattern):
    p = tmp_path / name
    p.write_text(content)
    with pytest.raises(UserError, match=pattern) as e:
        dl.read_table(p)
    assert "\n" not in str(e.value)


def test_path_errors(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(UserError) as e:
        dl.read_table(missing)
    assert str(e.value) == f"data.train_file: file not found: {missing} (check the path)"
    with pytest.raises(UserError, match="data.validation_file: file not found"):
        dl.load_splits(DataConfig(train_file=str(write_table(tmp_path, "t.csv", [["a", "b"]])),
                                  validation_file=str(missing)))
    with pytest.raises(UserError, match="is a directory"):
        dl.read_table(tmp_path)
    with pytest.raises(UserError, match="data.encoding: unknown encoding 'klingon'"):
        dl.read_table(write_table(tmp_path, "t.csv", [["a", "b"]]), encoding="klingon")


def test_decode_error_position(tmp_path):
    p = tmp_path / "quotes.csv"
    p.write_bytes(b"source,target\n" + b"a" * 70_000 + b",\x93quoted\x94\n")
    with pytest.raises(UserError) as e:
        dl.read_table(p)
    assert str(e.value) == (f"{p} is not valid utf-8 (byte 0x93 at position {14 + 70_001}, line 2); "
                            f"set data.encoding, e.g. cp1252")
    assert dl.read_table(p, encoding="cp1252")["target"].iloc[0] == "\u201cquoted\u201d"


# --------------------------------------------------------------------------- cleaning and columns
def test_cleaning_counts(tmp_path, caplog):
    rows = [["s1", "r1", None], ["", "r2", "r2b"], ["   ", "r3", None], [None, "r4", None],
            ["s5", None, "  "], ["s6", " \t", ""], ["s7", "", " r7 "], [" s8 ", "r8", "r8"], ["s1", "r1b", "r1"]]
    path = write_table(tmp_path, "d.csv", rows, ("src", "t1", "t2"))
    cfg = DataConfig(train_file=str(path), source_column="src", target_column=["t1", "t2"], split_ratios=[1, 0, 0])
    with caplog.at_level(logging.INFO, logger="kd"):
        splits = dl.load_splits(cfg)
    assert sorted((e.source, e.references) for e in splits.train) == [
        ("s1", ["r1", "r1b"]), ("s7", ["r7"]), ("s8", ["r8"])]
    assert splits.validation == [] and splits.test == []
    assert (f"data.train_file {path}: kept 4 of 9 rows; dropped 3 with an empty source ('src') and 2 with no "
            f"reference ('t1', 't2'); 4 rows share 3 distinct sources") in caplog.text
    assert "removed 2 repeated references" in caplog.text


def test_missing_columns(tmp_path):
    path = write_table(tmp_path, "d.csv", [["a", "b"]], ("text", "summary"))
    with pytest.raises(UserError) as e:
        dl.load_splits(DataConfig(train_file=str(path), target_column="summary"))
    assert str(e.value) == (f"data.train_file {path}: no column 'source'; available columns: 'text', 'summary'; "
                            f"set data.source_column")
    with pytest.raises(UserError, match=r"no column 'sumary' \(did you mean 'summary'\?\).*set data.target_column"):
        dl.load_splits(DataConfig(train_file=str(path), source_column="text", target_column=["summary", "sumary"]))


def test_nothing_left(tmp_path):
    path = write_table(tmp_path, "d.csv", [["a", ""], ["b", " "]])
    with pytest.raises(UserError, match=r"every value of the target column 'target' is empty \(2 rows\); "
                                        r"check data.target_column"):
        dl.load_splits(DataConfig(train_file=str(path)))
    path = write_table(tmp_path, "d.csv", [["", "x"], [" ", "y"]])
    with pytest.raises(UserError, match=r"every value of the source column 'source' is empty"):
        dl.load_splits(DataConfig(train_file=str(path)))
    path = write_table(tmp_path, "d.csv", [["", "x"], ["b", " "]])
    with pytest.raises(UserError, match=rf"{path}: no row has both a source \('source'\) and a reference"):
        dl.load_splits(DataConfig(train_file=str(path)))


def test_validation_file_needs_train_file(tmp_path):
    with pytest.raises(UserError, match="validation_file/test_file need a train_file"):
        dl.load_splits(DataConfig(dataset_name="x", validation_file=str(tmp_path / "v.csv")))


def test_no_source():
    with pytest.raises(UserError, match=r"^data: no data source; set data.train_file, data.dataset_name or "
                                        r"data.synthetic$"):
        dl.load_splits(DataConfig())


# --------------------------------------------------------------------------- splitting
@pytest.fixture
def hundred(tmp_path):
    # 100 distinct sources on 150 rows: every even source has a second row with another reference
    rows = [[f"src {i}", f"ref {i}"] for i in range(100)] + [[f"src {i}", f"alt {i}"] for i in range(0, 100, 2)]
    return write_table(tmp_path, "d.csv", rows)


def _ids(splits):
    return [[e.source for e in getattr(splits, n)] for n in ("train", "validation", "test")]


def test_split_deterministic_and_disjoint(hundred):
    a = dl.load_splits(DataConfig(train_file=str(hundred), split_seed=1))
    b = dl.load_splits(DataConfig(train_file=str(hundred), split_seed=1))
    c = dl.load_splits(DataConfig(train_file=str(hundred), split_seed=2))
    assert _ids(a) == _ids(b) and _ids(a) != _ids(c)
    assert [len(x) for x in _ids(a)] == [80, 10, 10]
    for s in (a, c):
        assert_disjoint(s)
        assert len(all_examples(s)) == 100 and len(dl.training_pairs(all_examples(s), True)) == 150
    assert all(len(e.references) == (2 if int(e.source.split()[1]) % 2 == 0 else 1) for e in all_examples(a))


@pytest.mark.parametrize("n, ratios, sizes", [
    (1, [0.8, 0.1, 0.1], [1, 0, 0]), (2, [0.8, 0.1, 0.1], [1, 1, 0]), (3, [0.8, 0.1, 0.1], [1, 1, 1]),
    (10, [0.5, 0.5, 0.0], [5, 5, 0]), (7, [1.0, 0.0, 0.0], [7, 0, 0]), (1000, [0.9, 0.05, 0.05], [900, 50, 50])])
def test_split_sizes(n, ratios, sizes):
    exs = [dl.Example(str(i), ["r"]) for i in range(n)]
    parts = dl.split_examples(exs, ratios, seed=0)
    assert [len(p) for p in parts] == sizes
    assert sorted(e.source for p in parts for e in p) == sorted(e.source for e in exs)


def test_explicit_files_are_not_resplit(tmp_path, hundred):
    val = write_table(tmp_path, "v.csv", [["v1", "x"], ["v2", "y"]])
    test = write_table(tmp_path, "t.csv", [["t1", "x"]])
    s = dl.load_splits(DataConfig(train_file=str(hundred), validation_file=str(val), test_file=str(test)))
    assert len(s.train) == 100 and _ids(s)[1:] == [["v1", "v2"], ["t1"]]
    # without a test file, test is carved from train with the ratios renormalised (0.8 : 0.1)
    s = dl.load_splits(DataConfig(train_file=str(hundred), validation_file=str(val)))
    assert [len(x) for x in _ids(s)] == [89, 2, 11]


def test_max_samples(hundred):
    full = dl.load_splits(DataConfig(train_file=str(hundred)))
    s = dl.load_splits(DataConfig(train_file=str(hundred), max_train_samples=7, max_eval_samples=3))
    assert [len(x) for x in _ids(s)] == [7, 3, 3]
    assert _ids(s) == [ids[:k] for ids, k in zip(_ids(full), (7, 3, 3))]  # truncation after the split
    assert s.summary() == "train 7 examples (" + str(sum(len(e.references) for e in s.train)) + \
        " references), validation 3 examples (" + str(sum(len(e.references) for e in s.validation)) + \
        " references), test 3 examples (" + str(sum(len(e.references) for e in s.test)) + " references)"


def test_training_pairs():
    exs = [dl.Example("a", ["x", "y"]), dl.Example("b", ["z"])]
    assert dl.training_pairs(exs, True) == [("a", "x"), ("a", "y"), ("b", "z")]
    assert dl.training_pairs(exs, False) == [("a", "x"), ("b", "z")]


# --------------------------------------------------------------------------- synthetic and hub
def test_synthetic_tasks_are_deterministic_and_split_cleanly():
    import demo_data
    for task in demo_data.SYNTHETIC_TASKS:
        assert demo_data.generate(task, 30, 5) == demo_data.generate(task, 30, 5)
        assert demo_data.generate(task, 30, 5) != demo_data.generate(task, 30, 6)
    s = dl.load_splits(DataConfig(synthetic=SyntheticConfig("polite_rewrite", 200, 3)))
    assert len(dl.training_pairs(all_examples(s), True)) == 200
    assert_disjoint(s)
    with pytest.raises(UserError, match=r"^data.synthetic.task 'nope' is unknown; choose one of polite_rewrite"):
        dl.load_splits(DataConfig(synthetic=SyntheticConfig("nope", 5, 0)))


def test_hub_offline_is_one_line_and_tries_no_connection(no_connections):
    """Offline, the libraries' ~25 s of network retries never start: no socket connects at all."""
    attempts = no_connections
    with pytest.raises(UserError) as e:
        dl.load_splits(DataConfig(dataset_name="cnn_dailymail", dataset_config="3.0.0"))
    assert attempts == []
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("data.dataset_name 'cnn_dailymail': could not load it")
    assert msg.endswith("download the data and set data.train_file instead")


def test_hub_unreachable_fails_before_retrying(monkeypatch):
    for var in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(dl, "hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(UserError, match=r"^data.dataset_name 'xsum': cannot reach .* \(no network\?\); "
                                        r"download the data and set data.train_file instead"):
        dl.load_splits(DataConfig(dataset_name="xsum"))


# --------------------------------------------------------------------------- collator
@pytest.fixture(scope="module")
def tiny_tokenizer():
    """A word-level tokenizer built in memory: no files, no network."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    words = "<pad> </s> <unk> fix: a b c d e f g h".split()
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def check_batch(batch, tokenizer, pairs, prefix, max_src, max_tgt):
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    n = len(pairs)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    assert ids.shape == mask.shape and ids.shape[0] == labels.shape[0] == n
    src_lens = [min(len(tokenizer(prefix + s)["input_ids"]), max_src) for s, _ in pairs]
    tgt_lens = [min(len(tokenizer(text_target=t)["input_ids"]), max_tgt) for _, t in pairs]
    assert ids.shape[1] == max(src_lens) and labels.shape[1] == max(tgt_lens)  # dynamic padding
    for i in range(n):
        assert mask[i].tolist() == [1] * src_lens[i] + [0] * (ids.shape[1] - src_lens[i])
        assert (ids[i, src_lens[i]:] == tokenizer.pad_token_id).all()
        assert (labels[i, :tgt_lens[i]] != -100).all() and (labels[i, tgt_lens[i]:] == -100).all()
        assert labels[i, tgt_lens[i] - 1].item() == tokenizer.eos_token_id  # truncation keeps </s>


def test_collator_tiny_tokenizer(tiny_tokenizer):
    pairs = [("a b c d e f g h", "b"), ("a", "c d e f g h a b"), ("b c", "d e")]
    coll = dl.Seq2SeqCollator(tiny_tokenizer, "fix: ", max_source_length=6, max_target_length=5)
    batch = coll(pairs)
    check_batch(batch, tiny_tokenizer, pairs, "fix: ", 6, 5)
    assert batch["input_ids"].shape == (3, 6) and batch["labels"].shape == (3, 5)
    assert tiny_tokenizer.convert_ids_to_tokens(batch["input_ids"][1].tolist()) == ["fix:", "a", "</s>", "<pad>",
                                                                                    "<pad>", "<pad>"]
    assert batch["labels"][0].tolist() == [5, 1, -100, -100, -100]
    enc = coll.encode_sources(["a", "b c"])
    assert set(enc) == {"input_ids", "attention_mask"} and enc["input_ids"].tolist() == [[3, 4, 1, 0], [3, 5, 6, 1]]


def test_collator_needs_pad_token(tiny_tokenizer):
    tok = types.SimpleNamespace(pad_token_id=None)
    with pytest.raises(UserError, match="tokenizer has no pad token"):
        dl.Seq2SeqCollator(tok, "", 8, 8)


@pytest.mark.skipif(not (T5_DIR / "spiece.model").is_file(), reason=f"T5 tokenizer not found in {T5_DIR}")
def test_collator_t5():
    from transformers import T5TokenizerFast
    tok = T5TokenizerFast.from_pretrained(str(T5_DIR))
    pairs = [("The quick brown fox jumps over the lazy dog " * 10, "A fox."),
             ("Hello", "A much longer reference that will certainly be cut off somewhere")]
    coll = dl.Seq2SeqCollator(tok, "summarize: ", max_source_length=16, max_target_length=8)
    batch = coll(pairs)
    check_batch(batch, tok, pairs, "summarize: ", 16, 8)
    assert batch["input_ids"].shape == (2, 16) and batch["labels"].shape == (2, 8)
    assert tok.decode(batch["input_ids"][1], skip_special_tokens=True) == "summarize: Hello"
    assert (batch["labels"][0] == -100).sum() == 8 - len(tok(text_target="A fox.")["input_ids"])


def test_collator_appends_eos_for_tokenizers_that_add_none(shared):
    """GPT-2's tokenizer adds no end-of-sequence token; a seq2seq target must end with one."""
    from models import tokenizer_from_path
    tok = tokenizer_from_path(str(shared / "tokenizers" / "gpt2"))
    tok.pad_token = tok.eos_token
    col = dl.Seq2SeqCollator(tok, "", 16, 4)
    assert col.append_eos
    batch = col([("hello world", "hello world"), ("a", "a b c d e f g h")])
    labels = batch["labels"].tolist()
    assert labels[0] == tok("hello world").input_ids + [50256, -100]
    assert labels[1][-1] == 50256 and len(labels[1]) == 4  # truncated to max_target_length, eos kept
