"""Speed, memory and size of one model: what a deployment decision needs besides quality."""
from __future__ import annotations

import gc
import multiprocessing
import platform
import tempfile
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


# --------------------------------------------------------------------------- one model per process
def measure_in_child(model_dir: Path, sources: list[str], gen: dict, device, precision, warmup_batches: int,
                     latency_samples: int) -> tuple[list[str], dict]:
    """Predictions, throughput, latency and peak memory of the model saved in ``model_dir``,
    measured in a child process of its own, so that no other model, and no allocation left over
    from one, is counted in its memory or slows it down.

    The child forks from a server process that has imported torch and transformers but holds no
    model (``forkserver``), so starting one costs milliseconds, not an interpreter start-up."""
    ctx = multiprocessing.get_context(_START_METHOD)
    if _START_METHOD == "forkserver":
        ctx.set_forkserver_preload(["torch", "transformers", "benchmark.measure"])
    job = dict(model_dir=str(model_dir), sources=sources, gen=gen, device=device, precision=precision,
               threads=torch.get_num_threads(), warmup_batches=warmup_batches, latency_samples=latency_samples)
    with ctx.Pool(1) as pool:
        return pool.apply(_child, (job,))


_START_METHOD = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"


def _child(job: dict) -> tuple[list[str], dict]:
    import transformers
    from models import tokenizer_from_path
    transformers.utils.logging.set_verbosity_error()  # as in the parent: no progress bars per model
    transformers.utils.logging.disable_progress_bar()
    torch.set_num_threads(job["threads"])
    device = job["device"]
    gen = dict(job["gen"], device=device, precision=job["precision"])
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING as SEQ2SEQ
    model_class = SEQ2SEQ[type(transformers.AutoConfig.from_pretrained(job["model_dir"]))]  # imports its code
    peak = PeakMemory(device)  # from here on: the model's memory, not library code
    model = model_class.from_pretrained(job["model_dir"]).to(device).eval()
    tokenizer = tokenizer_from_path(job["model_dir"])
    sources = job["sources"]
    if job["warmup_batches"]:  # first calls pay for allocation and kernel selection
        generate_texts(model, tokenizer, sources[:gen["batch_size"] * job["warmup_batches"]], **gen)
    preds, speed = timed_generation(model, tokenizer, sources, gen, device)
    speed["peak_memory_mb"] = peak.mb()
    speed.update(latency(model, tokenizer, sources, gen, device, job["latency_samples"]))
    return preds, speed


class PeakMemory:
    """The peak memory of this process since it was created, above what it held then.

    CUDA: the allocator's peak (``max_memory_allocated``, reset at creation). CPU: the kernel's
    high-water mark of the resident set (VmHWM, reset through /proc/self/clear_refs) minus the
    resident set at creation; elsewhere the peak RSS (ru_maxrss) minus the RSS at creation."""

    def __init__(self, device):
        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            self.base = torch.cuda.memory_allocated(device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
        except OSError:
            pass
        self.base = _rss_bytes("VmRSS")

    def mb(self) -> float:
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _rss_bytes("VmHWM")
        return round((peak - self.base) / 2**20, 1)


def _rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) from /proc/self/status; the peak RSS elsewhere."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource
    scale = 1 if platform.system() == "Darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


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


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total, trainable) parameters; tied weights are counted once."""
    seen, total, trainable = set(), 0, 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return total, trainable
