"""PNG plots of a benchmark: metric bars with interval whiskers, quality vs speed, training curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed (servers, CI)
import matplotlib.pyplot as plt  # noqa: E402

from benchmark.quality import LOWER_IS_BETTER  # noqa: E402
from benchmark.report import metric_keys  # noqa: E402
from utils.files import read_records  # noqa: E402


def write_plots(results: dict, out: Path, run_dirs: dict[str, Path]) -> list[str]:
    """All plots for ``results``; ``run_dirs`` maps a role to the directory of its metrics.jsonl."""
    plot_dir = out / "plots"
    plot_dir.mkdir(exist_ok=True)
    written = [p for p in (metric_bars(results, plot_dir / "metrics.png"),
                           quality_vs_speed(results, plot_dir / "quality_vs_speed.png")) if p]
    for role, run_dir in run_dirs.items():
        curve = training_curves(run_dir / "metrics.jsonl", plot_dir / f"training_{role}.png", role)
        written += [curve] if curve else []
    return [str(p) for p in written]


def metric_bars(results: dict, path: Path) -> Path | None:
    """Scores on the 0-100 scale (perplexity, unbounded and lower-is-better, is left out)."""
    models = results["models"]
    keys = [k for k in metric_keys(results) if k not in LOWER_IS_BETTER]
    if not keys:
        return None
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(max(6, 0.3 * len(keys) * len(models) + 2), 4))
    for i, m in enumerate(models):
        xs = [k + (i - (len(models) - 1) / 2) * width for k in range(len(keys))]
        values = [m["metrics"].get(k) or 0.0 for k in keys]
        ci = m.get("ci", {})
        err = [[v - ci[k][0] if k in ci else 0 for k, v in zip(keys, values)],
               [ci[k][1] - v if k in ci else 0 for k, v in zip(keys, values)]]
        ax.bar(xs, values, width, yerr=err, capsize=2, label=m["name"])
    ax.set_xticks(range(len(keys)), keys, rotation=30, ha="right")
    ax.set_ylabel("score (0-100)")
    ax.set_title(f"Quality on {results['num_examples']} {results['split']} examples")
    ax.legend(fontsize=8)
    return _save(fig, path)


def quality_vs_speed(results: dict, path: Path, metric: str | None = None) -> Path | None:
    timed = [m for m in results["models"] if m.get("samples_per_s")]
    if not timed:
        return None
    keys = [k for k in metric_keys(results) if k not in LOWER_IS_BETTER]
    if not keys:
        return None
    metric = metric or ("rougeL" if "rougeL" in keys else keys[0])
    timed = [m for m in timed if m["metrics"].get(metric) is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    for m in timed:
        ax.scatter(m["samples_per_s"], m["metrics"][metric], s=20 + 80 * (m["params_total"] / max(
            t["params_total"] for t in timed)))
        ax.annotate(m["name"], (m["samples_per_s"], m["metrics"][metric]), textcoords="offset points", xytext=(5, 5))
    ax.set_xlabel("throughput (samples/s)")
    ax.set_ylabel(metric)
    ax.set_title("Quality vs speed (marker size: parameters)")
    return _save(fig, path)


def training_curves(metrics_file: Path, path: Path, role: str) -> Path | None:
    if not metrics_file.is_file():
        return None
    records, _ = read_records(metrics_file)  # damaged lines (a kill mid-write) left out of the plot
    train = [r for r in records if isinstance(r.get("step"), int) and isinstance(r.get("loss"), (int, float))]
    evals = [r for r in records if isinstance(r.get("step"), int) and isinstance(r.get("eval"), dict)
             and isinstance(r["eval"].get("loss"), (int, float))]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = [r["step"] for r in train]
    for key in [k for k in train[0] if k not in ("step", "epoch", "lr", "tokens_per_s")]:
        ax.plot(steps, [r.get(key) for r in train], label=f"train {key}")
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval"]["loss"] for r in evals], "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss per target token")
    ax.set_title(f"{role} training")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
