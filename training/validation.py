"""Validation of the model being trained: loss per target token and, when the best model is chosen
by one, generation metrics. Under torchrun each rank scores its shard of the validation split and the
numbers are summed (the loss) or the predictions gathered (the metrics), so every rank reaches the
same verdict and keeps the same best step."""
from __future__ import annotations

import math

import torch

from distiller_zoo import IGNORE_INDEX, cross_entropy_sum
from generation import generate_texts, generation_config
from utils import distributed as dist
from utils.errors import UserError
from utils.logs import log


class ValidationMixin:
    """The Trainer's validation (see training.trainer.Trainer)."""

    @staticmethod
    def _forward(model, batch, need):
        dec = model.prepare_decoder_input_ids_from_labels(labels=batch["labels"])
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], decoder_input_ids=dec,
                     output_hidden_states="hidden_states" in need, output_attentions="attentions" in need,
                     use_cache=False)


    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss (CE per target token) and, when the best metric needs them, generation metrics."""
        job = self.job
        self.model.eval()
        result = {"loss": self._validation_loss()}
        bad = [k for k, v in result.items() if not math.isfinite(v)]
        if bad or not self._weights_finite():
            self._stop_not_finite(f"at step {self.state.step} the " + (
                f"validation {bad[0]} is {result[bad[0]]}" if bad else "weights are no longer finite"))
        if self.metric_for_best != "loss":
            result.update(self._generation_metrics())
        self.model.train()
        self._track_best(result)
        log.info("%s validation at step %d: %s", job.role, self.state.step,
                 " ".join(f"{k} {v:.4f}" for k, v in result.items()))
        return result

    def _validation_loss(self) -> float:
        """CE per target token over the validation split; under torchrun each rank scores its shard."""
        job = self.job
        pairs = dist.shard([(e.source, e.references[0]) for e in job.val_examples])
        total, tokens = 0.0, 0
        for i in range(0, len(pairs), job.optim.eval_batch_size):
            batch = self._to_device(job.collator(pairs[i:i + job.optim.eval_batch_size]))
            with job.precision.autocast():
                out = self._forward(self.model, batch, frozenset())
            total += float(cross_entropy_sum(out.logits, batch["labels"], len(self.tokenizer)))
            tokens += int((batch["labels"] != IGNORE_INDEX).sum())
        total, tokens = dist.sum_all([total, tokens])
        return total / max(tokens, 1)

    def _generation_metrics(self) -> dict:
        from metrics import compute_metrics
        job = self.job
        examples = job.val_examples[:job.optim.eval_generate_samples]
        mine = dist.shard([e.source for e in examples])  # each rank decodes its shard; all score all of them
        preds, _ = generate_texts(self.model, self.tokenizer, mine,
                                  prefix=job.collator.prefix, max_source_length=job.collator.max_source_length,
                                  gen_config=generation_config(job.generation, self.model, self.tokenizer),
                                  batch_size=job.optim.eval_batch_size, device=job.device,
                                  precision=job.precision) if mine else ([], 0)
        preds = [p for part in dist.all_gather(preds) for p in part]
        scores = compute_metrics(preds, [e.references for e in examples])
        scores["bleu"] = scores.get("bleu4", scores.get("sacrebleu"))
        if self.metric_for_best not in scores:
            raise UserError(f"training.{job.role}.metric_for_best {self.metric_for_best!r} is not a computed metric; "
                            f"choose loss or one of {', '.join(sorted(scores))}")
        return scores

    def _track_best(self, result: dict) -> None:
        s, value = self.state, result[self.metric_for_best]
        s.history.append({"step": s.step, **result})
        if not math.isfinite(value):  # never the best (validate stops on a non-finite loss before this)
            return
        better = s.best_metric is None or (value > s.best_metric if self.greater_is_better else value < s.best_metric)
        if better:
            s.best_metric, s.best_step = value, s.step
            self._save_weights(self.job.checkpoint_dir / "best.pt")
