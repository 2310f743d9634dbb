"""Speed, memory and size of one model: what a deployment decision needs besides quality."""
from __future__ import annotations

import os
import platform
import tempfile
import threading
import time
from pathlib import Path

import torch

from generation import generate_texts


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_generation(model, tokenizer, sources, gen: dict, device) -> tuple[list[str], dict]:
    """Generate for all ``sources`` at the configured batch size; predictions and throughput.

    Inputs are sorted by length inside ``generate_texts`` (less padding per batch)."""
    sync(device)
    t0 = time.perf_counter()
    preds, n_tokens = generate_texts(model, tokenizer, sources, **gen)
    sync(device)
    elapsed = time.perf_counter() - t0
    return preds, {"generation_s": round(elapsed, 3), "samples_per_s": round(len(sources) / elapsed, 3),
                   "tokens_per_s": round(n_tokens / elapsed, 1)}


def latency(model, tokenizer, sources, gen: dict, device, n: int) -> dict:
    """Per-sample latency at batch size 1 over the first ``n`` sources: p50 and p95 in ms."""
    if n <= 0 or not sources:
        return {}
    one = dict(gen, batch_size=1)
    times = []
    for src in sources[:n]:
        sync(device)
        t0 = time.perf_counter()
        generate_texts(model, tokenizer, [src], **one)
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    t = torch.tensor(times, dtype=torch.float64)
    return {"latency_p50_ms": round(float(t.quantile(0.5)), 2), "latency_p95_ms": round(float(t.quantile(0.95)), 2),
            "latency_samples": len(times)}


class PeakMemory:
    """Peak memory while the block runs: CUDA max allocated, or the process's peak resident set
    size on CPU (sampled every 5 ms from /proc; a CPU figure includes the interpreter and every
    loaded model, so compare models by it only within one run)."""

    def __init__(self, device):
        self.device, self.peak_mb = device, None
        self._stop = threading.Event()

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._peak = _rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        else:
            self._stop.set()
            self._thread.join()
            self.peak_mb = round(max(self._peak, _rss_bytes()) / 2**20, 1)
        return False


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux: the peak RSS of the whole process so far
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def disk_mb(model, path: Path | None) -> float:
    """Megabytes of saved weights (safetensors, else PyTorch .bin); a model without a directory
    is saved to a temporary one in safetensors to be measured the same way."""
    if path is not None and Path(path).is_dir():
        return _weights_mb(Path(path))
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return _weights_mb(Path(tmp))


def _weights_mb(directory: Path) -> float:
    files = list(directory.glob("*.safetensors")) or list(directory.glob("*.bin"))
    return round(sum(p.stat().st_size for p in files) / 2**20, 3)


def environment(device, precision) -> dict:
    """Hardware and library versions, so a result can be reproduced or explained."""
    from importlib.metadata import PackageNotFoundError, version
    env = {"device": str(device), "precision": precision.name, "python": platform.python_version(),
           "platform": platform.platform(), "processor": _cpu_name(), "cpu_threads": torch.get_num_threads()}
    for lib in ("torch", "transformers", "tokenizers", "datasets", "rouge_score", "sacrebleu", "nltk", "bert_score"):
        try:
            env[lib] = version(lib)
        except PackageNotFoundError:
            env[lib] = None
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
