"""A teacher with another tokenizer (causal or seq2seq), answering through the same seam.

:class:`AlignedTeacher` is the third implementation of ``targets(batch, need)``
(:mod:`distiller_zoo.teacher`): it runs the teacher on its own tokens (the ``teacher_*`` keys that
:class:`data_loader.cross.CrossTokenizerCollator` adds), keeps its final states at the positions
aligned with student target positions (:mod:`distiller_zoo.alignment`), and hands the losses
:class:`AlignedChunk` objects: the teacher's logits at the aligned rows of a chunk plus the
vocabulary map (:mod:`distiller_zoo.vocab_map`). Losses compare distributions over the shared
sub-vocabulary, renormalised on both sides (ULD uses the full ones); rows without a teacher
signal contribute 0 to the KD sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distiller_zoo.base import IGNORE_INDEX
from distiller_zoo.heads import LMHead, decoder_states, lm_head
from distiller_zoo.teacher import TeacherTargets
from distiller_zoo.vocab_map import VocabMap


@dataclass
class AlignedChunk:
    """The teacher at the aligned rows of one chunk of ``n`` student positions.

    ``logits [m, Vt]``: the teacher's logits over its own vocabulary at the ``m`` aligned rows;
    ``rows [m]``: their indices in the chunk (0 <= row < n); ``vmap``: teacher -> student ids."""

    logits: torch.Tensor
    rows: torch.Tensor
    n: int
    vmap: VocabMap

    def full_logp(self, t: float) -> torch.Tensor:
        """``log softmax(z / T)`` over the teacher's whole vocabulary, ``[m, Vt]`` (float32)."""
        return F.log_softmax(self.logits.float() / t, dim=-1)

    def shared_logp(self, t: float) -> torch.Tensor:
        """The teacher's distribution over the shared sub-vocabulary ``[m, S]``, column ``c`` being
        student id ``vmap.student_ids[c]``: ``softmax(z / T)`` restricted to the mapped teacher ids,
        renormalised, with the probabilities of teacher ids sharing a student id added up."""
        p = F.softmax(self.logits.float()[:, self.vmap.teacher_ids] / t, dim=-1)
        shared = p.new_zeros(p.shape[0], len(self.vmap.student_ids)).index_add_(1, self.vmap.columns, p)
        return shared.log()


class AlignedTargets(TeacherTargets):
    """The teacher's states at the aligned positions of one micro-batch, turned into logits per chunk."""

    def __init__(self, hidden: torch.Tensor, rows: torch.Tensor, n: int, head: LMHead, vmap: VocabMap):
        self.hidden, self.rows, self.n, self.head, self.vmap = hidden, rows, n, head, vmap
        self.aligned = int(rows.numel())

    @torch.no_grad()
    def chunk(self, start: int, end: int) -> AlignedChunk:
        lo, hi = (int(torch.searchsorted(self.rows, torch.tensor(x, device=self.rows.device))) for x in (start, end))
        return AlignedChunk(self.head(self.hidden[lo:hi]), self.rows[lo:hi] - start, end - start, self.vmap)


class AlignedTeacher:
    """A frozen teacher with its own tokenizer: causal (``AutoModelForCausalLM``) or seq2seq."""

    def __init__(self, model, vmap: VocabMap, vocab_size: int, causal: bool, summary: str | None = None, log=None):
        self.model = model.eval().requires_grad_(False)
        self.vmap, self.vocab_size, self.causal = vmap, vocab_size, causal
        self.summary, self.log = summary, log   # logged at the first batch, once the run's log file is attached

    def to(self, device) -> "AlignedTeacher":
        self.model.to(device)
        self.vmap = self.vmap.to(device)
        return self

    @torch.no_grad()
    def targets(self, batch: dict, need: frozenset = frozenset()) -> AlignedTargets:
        if need - {"logits"}:
            raise ValueError("a teacher with another tokenizer provides logits only; hidden-state and attention "
                             "losses need a teacher with the student's tokenizer")
        if self.summary and self.log:
            self.log.info("%s", self.summary)
            self.summary = None
        ids, mask = batch["teacher_input_ids"], batch["teacher_attention_mask"]
        if self.causal:   # the base model's output is what the LM head reads (final norm applied)
            hidden = self.model.base_model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
        else:
            _, hidden = decoder_states(self.model, {"input_ids": ids, "attention_mask": mask,
                                                    "labels": batch["teacher_labels"]})
        index = batch["teacher_index"][batch["labels"] != IGNORE_INDEX]              # [N], row-major
        row_of = torch.arange(ids.shape[0], device=ids.device).unsqueeze(1).expand_as(batch["labels"])
        row_of = row_of[batch["labels"] != IGNORE_INDEX]
        rows = (index >= 0).nonzero().squeeze(1)
        states = hidden[row_of[rows], index[rows]]
        return AlignedTargets(states, rows, index.numel(), lm_head(self.model, self.vocab_size), self.vmap)


def cross_tokenizer_source(teacher, teacher_tok, student_tok, collator, pairs, prompt_template: str, log=None):
    """``(collator, teacher source)`` for a teacher with another tokenizer or a causal one: the
    student's collator wrapped to tokenize for the teacher too, and an :class:`AlignedTeacher`.
    Logs the vocabulary overlap and the share of training target positions with a teacher signal."""
    from data_loader.cross import CrossTokenizerCollator
    from distiller_zoo.vocab_map import vocab_map
    causal = not teacher.config.is_encoder_decoder
    vmap = vocab_map(teacher_tok, student_tok)
    cross = CrossTokenizerCollator(collator, teacher_tok, causal, prompt_template)
    summary = (f"{'causal' if causal else 'seq2seq'} teacher with another tokenizer: vocabulary: {vmap.describe()}; "
               f"{100 * cross.aligned_fraction(pairs):.1f}% of the training target positions receive a teacher "
               f"signal (aligned by characters)")
    return cross, AlignedTeacher(teacher, vmap, len(teacher_tok), causal, summary, log)
