"""The benchmark chart: steady rate relative to the bare loop at each latency, and tokens/s of (5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on these machines
    import matplotlib.pyplot as plt

    http = [r for r in rows if r["benchmark"] == "http"]
    latencies = sorted({r["latency_ms"] for r in http})
    modes = list(dict.fromkeys(r["mode"] for r in http))
    tf = [r for r in rows if r["benchmark"] == "transformers"]
    fig, axes = plt.subplots(1, 2 if tf else 1, figsize=(14 if tf else 9, 5), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / max(1, len(latencies))
    for i, latency in enumerate(latencies):
        by_mode = {r["mode"]: r for r in http if r["latency_ms"] == latency}
        values = [by_mode.get(m, {}).get("ratio_to_ceiling") or 0 for m in modes]
        bars = ax.barh(
            [y + i * width for y in range(len(modes))], values, height=width, label=f"{latency:g} ms"
        )
        for bar, m in zip(bars, modes, strict=True):
            rate = by_mode.get(m, {}).get("steady_rps")
            if rate is not None:
                ax.text(
                    bar.get_width(),
                    bar.get_y() + bar.get_height() / 2,
                    f" {rate:,.0f}/s",
                    va="center",
                    fontsize=8,
                )
    ax.set_yticks([y + width * (len(latencies) - 1) / 2 for y in range(len(modes))], modes, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("steady rate at the server, ratio to the bare aiohttp loop (label: requests/s)")
    ax.set_title("OpenAI-compatible loopback server, by server latency")
    ax.legend(title="latency")
    if tf:
        # Models differ ~50x in speed: plot each engine row relative to its own plain baseline.
        ax2 = axes[0][1]
        plain = {r["model"]: r["tokens_per_s"] for r in tf if r["mode"] == "plain generate"}
        labels = [f"{r['model']}\n{r['mode']}" for r in tf]
        values = [r["tokens_per_s"] / plain[r["model"]] for r in tf]
        bars = ax2.bar(
            range(len(tf)), values, color=["#999" if r["mode"] == "plain generate" else "#1f77b4" for r in tf]
        )
        for bar, r in zip(bars, tf, strict=True):
            ax2.text(
                bar.get_x() + bar.get_width() / 2,
                bar.get_height(),
                f"{r['tokens_per_s']:.0f} tok/s",
                ha="center",
                va="bottom",
                fontsize=8,
            )
        ax2.set_xticks(range(len(tf)), labels, fontsize=8)
        ax2.set_ylabel("generated tokens/s, relative to plain generate")
        ax2.set_title("(5) transformers engine vs plain batched generate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
