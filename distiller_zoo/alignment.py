"""Which teacher position speaks for which student target position: alignment by characters.

Teacher and student tokenize the same target text differently. Each target token gets a
*start*: the character offset of its first non-whitespace character in the target text
(``▁world`` and ``Ġworld`` both start at the ``w``). The next-token distribution predicting a
token is the model's view of the text *before* that start, so a student position and a teacher
position that share a start condition on the same text (up to whitespace) and are aligned:

- one token on each side with the same start (the common case: ``▁world`` / ``Ġworld``): aligned;
- one student token spanning several teacher tokens (``▁café`` / ``Ġcaf`` ``é``): the student
  position is aligned with the *first* teacher piece (same start, same context); the teacher's
  later pieces are not used;
- several student tokens inside one teacher token (``▁hel`` ``lo`` / ``Ġhello``): the first is
  aligned, the later ones start mid-token, where the teacher has no distribution: no signal;
- whitespace-only tokens (T5's lone ``▁``, GPT-2's ``Ġ``, a tab) start nothing: no signal;
- several pieces of one character (an emoji split into bytes) share its start: the first counts;
- the end-of-sequence tokens start where the text ends (trailing whitespace ignored), so they
  align with each other when neither side was truncated.

Positions without a signal still get the student's cross-entropy; the KD terms skip them.
"""
from __future__ import annotations


def token_starts(ids, text: str, offsets, plain_ids, blank, eos_id: int | None, shift: int = 0) -> list[int | None]:
    """The start of each of ``ids`` (a model's target ids, special tokens included) in ``text``.

    ``plain_ids`` / ``offsets`` are the tokenizer's ids and character offsets for ``text`` without
    special tokens (possibly of ``" " * shift + text``: offsets are moved back by ``shift``);
    ``blank[id]`` tells whitespace-only tokens. Ids that are neither the next plain id nor the
    end-of-sequence token (e.g. a beginning-of-sequence token) start nothing."""
    starts, k, end = [], 0, 0
    for tid in ids:
        if k < len(plain_ids) and plain_ids[k] == tid:
            a, b = offsets[k]
            a, b = max(a - shift, 0), max(b - shift, 0)
            k += 1
            end = max(end, b)
            first = next((i for i in range(a, min(b, len(text))) if not text[i].isspace()), None)
            starts.append(None if blank[tid] else first)
        elif tid == eos_id:
            starts.append(len(text[:end].rstrip()))
        else:
            starts.append(None)
    return starts


def align(student_starts, teacher_starts) -> list[int | None]:
    """For each student token, the index of the teacher token with the same start (the first such),
    or None; of several student tokens with one start only the first is aligned."""
    first_teacher: dict[int, int] = {}
    for i, s in enumerate(teacher_starts):
        if s is not None:
            first_teacher.setdefault(s, i)
    out, seen = [], set()
    for s in student_starts:
        out.append(first_teacher.get(s) if s is not None and s not in seen else None)
        if s is not None:
            seen.add(s)
    return out
