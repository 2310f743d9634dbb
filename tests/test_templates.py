"""Templates are data, not code: only {prefix} and {source}, as they are; filled by plain substitution."""
from __future__ import annotations

import json
import string
import subprocess
import sys

import pytest

from conftest import ROOT, SHARED, TINY_CONFIG
from data_loader.cross import fill_template
from main import main
from settings import load_config
from utils.errors import UserError

# template -> what the one-line error says about it
BAD = {
    "Q: {source:}": "{source:} has a format spec or conversion",  # an empty spec: parse cannot tell it apart
    "{prefix:}{source}": "{prefix:} has a format spec or conversion",
    "{source.__class__} {source}": "{source.__class__} reads an attribute or index",
    "{source.x}": "{source.x} reads an attribute or index",
    "{source[0]}{source}": "{source[0]} reads an attribute or index",
    "{prefix.__init__.__globals__}{source}": "reads an attribute or index",
    "{source!r}": "{source!r} has a conversion",
    "{source!s}": "{source!s} has a conversion",
    "{source:>10}": "{source:>10} has a format spec",
    "{source:{prefix}}": "has a format spec",
    "{}{source}": "{} is positional",
    "{0}{source}": "{0} is positional",
    "{prefix}{text}\n": "{text} is not one of them",
    "{ source }": "{ source } is not one of them",
    "{source": "expected '}' before end of string",
    "} {source}": "Single '}' encountered",
    "Rewrite politely:\n": "has no {source}",
    "{{source}}": "has no {source}",      # a literal, not the placeholder
}
# template -> the prompt for prefix "P: " and source "a {prefix} b"
GOOD = {
    "{prefix}{source}\n": "P: a {prefix} b\n",
    "{source}": "a {prefix} b",
    "Q: {source}\nA:": "Q: a {prefix} b\nA:",
    "{{literal}} {prefix}{source}": "{literal} P: a {prefix} b",
    "{{{source}}}": "{a {prefix} b}",
    "}}{source}{{": "}a {prefix} b{",
    "{source} / {source}": "a {prefix} b / a {prefix} b",
}


def config_with(tmp_path, template: str):
    cfg = json.loads(json.dumps(TINY_CONFIG))
    cfg["teacher"]["prompt_template"] = template
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.parametrize("template", list(BAD))
def test_a_template_that_is_code_is_refused_at_config_load(tmp_path, capsys, template):
    path = config_with(tmp_path, template)
    with pytest.raises(UserError) as e:
        load_config(path)
    assert f"{path}: teacher.prompt_template: " in str(e.value) and BAD[template] in str(e.value)
    assert main(["--print-config", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and BAD[template] in err[0] and "Traceback" not in err[0]


def test_the_command_line_refuses_it_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "main.py"), "--print-config", "--config",
                           str(config_with(tmp_path, "{source.__class__} {source}"))],
                          capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and proc.stdout == "" and len(err) == 1
    assert "teacher.prompt_template" in err[0] and "{{ }}" in err[0]   # the rule and how to write a brace


@pytest.mark.parametrize("template", list(GOOD))
def test_a_good_template_is_accepted_and_filled_as_written(tmp_path, template):
    assert load_config(config_with(tmp_path, template)).teacher.prompt_template == template
    filled = fill_template(template, prefix="P: ", source="a {prefix} b")
    assert filled == GOOD[template]
    # on the forms allowed, the same text as str.format (of a source without braces)
    assert fill_template(template, prefix="P: ", source="x") == template.format(prefix="P: ", source="x")


def test_a_template_that_slipped_past_validation_evaluates_nothing():
    assert fill_template("{source.__class__} {source!r} {0} {source}", prefix="", source="s") == \
        "{source.__class__} {source!r} {0} s"


def test_every_template_field_of_the_config_is_checked():
    """The schema's only template-like field is prompt_template (if another appears, check it alike)."""
    import dataclasses
    import typing

    from settings import Config

    def names(cls):
        for f in dataclasses.fields(cls):
            hint = typing.get_type_hints(cls)[f.name]
            nested = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
            yield f.name
            for inner in nested:
                yield from names(inner)
    assert {n for n in names(Config) if "template" in n} == {"prompt_template"}
    for path in (ROOT / "settings").glob("*.py"):  # and no config value is ever run through str.format
        text = path.read_text()
        assert ".format(" not in text and "format_map" not in text, path


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared holds the GPT-2 and T5 tokenizers")
def test_the_causal_teacher_reads_the_filled_prompt():
    from transformers import GPT2TokenizerFast, T5TokenizerFast
    from data_loader.batching import Seq2SeqCollator
    from data_loader.cross import CrossTokenizerCollator
    gpt2 = GPT2TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "gpt2"))
    gpt2.pad_token = gpt2.eos_token
    t5 = T5TokenizerFast.from_pretrained(str(SHARED / "tokenizers" / "t5"))
    for template, expected in [("{{Task}} {prefix}{source}\n", "{Task} fix: you are {rude}\n"),
                               ("{source.__class__} {source}\n", "{source.__class__} you are {rude}\n")]:
        cross = CrossTokenizerCollator(Seq2SeqCollator(t5, "fix: ", 64, 64), gpt2, True, template)
        ids = cross.teacher_row(("you are {rude}", "you are kind"))[0].tolist()
        prompt = gpt2(expected).input_ids
        assert ids[:len(prompt)] == prompt and "<class" not in gpt2.decode(ids)


def test_formatter_parse_agrees_with_the_placeholders_we_fill():
    """fill_template and the validator read the same syntax: Formatter's literal braces."""
    for template in GOOD:
        literal = "".join(text for text, *_ in string.Formatter().parse(template))
        assert fill_template(template, prefix="", source="") == literal
