"""The PNG figures of ``train``, ``compare`` and ``identify`` (matplotlib, Agg backend, imported lazily)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import save_figure


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plot_train(history: list[dict[str, Any]], path: Path, title: str) -> None:
    plt = _plt()
    ep = [r["epoch"] for r in history]
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.4))
    ax[0].plot(ep, [100 * r["val_acc"] for r in history], label="validation")
    ax[0].plot(ep, [100 * r["train_acc"] for r in history], "--", label="training")
    ax[0].set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax[0].legend()
    ax[1].plot(ep, [100 * r["group_sparsity"] for r in history], label="group")
    ax[1].plot(ep, [100 * r["weighted_group_sparsity"] for r in history], label="weighted group")
    if "kernel_sparsity" in history[-1]:
        ax[1].plot(ep, [100 * r["kernel_sparsity"] for r in history], ":", label="kernel")
    ax[1].set(xlabel="epoch", ylabel="sparsity (%)", title="structured sparsity")
    ax[1].legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)


def _plot_compare(results: dict[str, dict[str, Any]], out_dir: Path, title: str, epochs: int) -> None:
    plt = _plt()
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for o, r in results.items():
        ep = [h["epoch"] for h in r["history"]]
        ax[0].plot(ep, [100 * h["group_sparsity"] for h in r["history"]], label=o)
        ax[1].plot(ep, [100 * h["weighted_group_sparsity"] for h in r["history"]], label=o)
        ax[2].plot(ep, [100 * h["val_acc"] for h in r["history"]], label=o)
    ax[0].set(xlabel="epoch", ylabel="%", title="group sparsity")
    ax[1].set(xlabel="epoch", ylabel="%", title="weighted group sparsity")
    ax[2].set(xlabel="epoch", ylabel="%", title="validation accuracy")
    ax[2].legend()
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, out_dir / "sparsity_vs_epochs.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 0.6 + 0.45 * len(results)))
    names = list(results)
    for i, o in enumerate(names):
        ch = [h["epoch"] for h in results[o]["history"] if h["pattern_changed"]]
        ax.scatter(ch, [i] * len(ch), marker="|", s=120, color="tab:gray")
        last = results[o]["last_pattern_change"]
        ax.scatter([last], [i], marker="o", color="tab:red", zorder=3)
        ax.annotate(f"{last}", (last, i), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, epochs + 1)
    ax.set(xlabel="epoch", title="epochs where the zero pattern changed (red: last change)")
    fig.tight_layout()
    save_figure(fig, out_dir / "stability.png", dpi=90)
    plt.close(fig)


def _plot_identify(results, names, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 3.8), squeeze=False)
    for ax, (key, res) in zip(axes[0], results.items()):
        ax2 = ax.twinx()
        for i, (o, h) in enumerate(res.items()):
            col = f"C{i}"
            ep = [r["epoch"] for r in h]
            ax.plot(ep, [100 * r["correctness"] for r in h], color=col, label=f"{o} (pattern)")
            ax2.plot(
                ep, [100 * r["train_error"] for r in h], "--", color=col, alpha=0.6, label=f"{o} (error)"
            )
        ax.set(xlabel="epoch", ylabel="group pattern correctness (%)", title=names[key], ylim=(0, 102))
        ax2.set_ylabel("training error (%) (dashed)")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
