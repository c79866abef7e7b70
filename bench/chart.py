"""The benchmark chart: steady rate relative to the bare loop at each latency; tokens/s of (5) and of
the local engines, each relative to its baseline."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def draw(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on these machines
    import matplotlib.pyplot as plt

    http = [r for r in rows if r["benchmark"] == "http"]
    tf = [r for r in rows if r["benchmark"] == "transformers"]
    local = [r for r in rows if r["benchmark"] == "local engines"]
    panels = 1 + bool(tf) + bool(local)
    fig, axes = plt.subplots(1, panels, figsize=(9 + 5 * (panels - 1), 5), squeeze=False)
    _http_panel(axes[0][0], http)
    rest = iter(axes[0][1:])
    if tf:
        _tokens_panel(
            next(rest),
            tf,
            baseline_mode="plain generate",
            labels=[f"{r['model']}\n{r['mode']}" for r in tf],
            ylabel="generated tokens/s, relative to plain generate",
            title="(5) transformers engine vs plain batched generate",
        )
    if local:
        _tokens_panel(
            next(rest),
            local,
            baseline_mode="transformers",
            labels=[r["mode"].replace(" ", "\n", 1) for r in local],
            ylabel="generated tokens/s, relative to transformers",
            title="local engines, embedded SmolLM2 on the CPU",
        )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _http_panel(ax: Any, http: list[dict[str, Any]]) -> None:
    latencies = sorted({r["latency_ms"] for r in http})
    modes = list(dict.fromkeys(r["mode"] for r in http))
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
    # Below the axes: inside, it covers the labels of whichever bars it sits on.
    ax.legend(title="latency", loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=len(latencies))


def _tokens_panel(
    ax: Any, rows: list[dict[str, Any]], *, baseline_mode: str, labels: list[str], ylabel: str, title: str
) -> None:
    """Bars of each row's tokens/s relative to the `baseline_mode` row of its model, labelled in tok/s."""
    # Models differ ~50x in speed: each row is measured against its own model's baseline.
    base = {r.get("model"): r["tokens_per_s"] for r in rows if r["mode"] == baseline_mode}
    ratios = [r["tokens_per_s"] / base[r.get("model")] for r in rows]
    colors = ["#999" if r["mode"] == baseline_mode else "#1f77b4" for r in rows]
    bars = ax.bar(range(len(rows)), ratios, color=colors)
    for bar, r in zip(bars, rows, strict=True):
        ax.text(
            bar.get_x() + bar.get_width() / 2,
            bar.get_height(),
            f"{r['tokens_per_s']:.0f} tok/s",
            ha="center",
            va="bottom",
            fontsize=8,
        )
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
