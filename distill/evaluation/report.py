"""The report of a multi-round run: `runs/NAME/report.md` with PNG plots, `report.html`, and a terminal table.

Built from `rounds.json` and each round's artefacts, so it can be regenerated at any time
(`distill report NAME`). Plots: the training loss of each round; each gate metric per round with
its 95% interval; and where rows were dropped, by filter, per round. `report.html` holds the same
content in one self-contained file (plots inlined), to open in a browser or attach to a message.
`review_report` is the same page with a link to each round's review page, as the review server
(`distill review NAME --serve`) serves it at /report.html: a link needs that server's token, so the
file on disk names the command instead.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Callable

from distill.errors import InputError
from distill.evaluation.gate import interval_text
from distill.evaluation.state import STATE, load_state

PLOTS = (("loss.png", "Training loss per round"), ("metrics.png", "Gate metrics per round (95% bootstrap intervals)"),
         ("drops.png", "Dropped rows by filter"),
         ("preference.png", "Preference training: reward margin and accuracy per step"))  # file, caption
# the plots `write_report` draws; the last only for a run whose rounds trained DPO or KTO (`--methods sft,dpo`)
METRICS = (("checks", "objective checks: pass-rate change"), ("judge", "pairwise judge: score (new - current)"),
           ("fidelity", "fidelity: NLL drop on held-out revisions"))


def load(root: Path) -> dict[str, Any]:
    path = root / STATE
    if not path.exists():
        raise InputError(f"{path}: no such file; `distill report` reads a run made with `distill run --rounds N`")
    return load_state(root)


def _interval(metric: dict[str, Any] | None) -> str:
    if not metric or "delta" not in metric:
        return "-"
    d = metric["delta"]
    return interval_text(d["mean"], d["low"], d["high"])


def _pass_rates(metric: dict[str, Any] | None) -> str:
    if not metric or "current_pass_rate" not in metric:
        return "-"
    return f"{metric['current_pass_rate']:.1%} -> {metric['new_pass_rate']:.1%}"


def summary_rows(state: dict[str, Any]) -> list[list[str]]:
    rows = []
    for r in state.get("rounds", []):
        metrics = r.get("metrics", {})
        forgetting = metrics.get("forgetting", {})
        counts = r.get("counts", {})
        training = r.get("training", {})
        methods = r.get("methods", ["sft"])
        rows.append([
            str(r["round"]) + ("" if methods == ["sft"] else f" ({'+'.join(methods)})"),
            str(r.get("new_examples", counts.get("filter", {}).get("out", 0))),
            str(r.get("train_examples", 0)),
            f"{training.get('final_loss'):.3f}" if training.get("final_loss") is not None else "-",
            _pass_rates(metrics.get("checks")),
            _interval(metrics.get("checks")), _interval(metrics.get("judge")), _interval(metrics.get("fidelity")),
            f"{forgetting['nll_increase']:+.1%}" if forgetting.get("nll_increase") is not None else "-",
            f"{forgetting['kl']:.4f}" if forgetting.get("kl") is not None else "-",
            "promoted" if r["decision"]["promote"] else "refused",
        ])
    return rows


HEADER = ["round", "new examples", "train examples", "final loss", "held-out pass rate", "checks delta [95% CI]",
          "judge delta [95% CI]", "fidelity delta [95% CI]", "replay NLL", "KL", "decision"]


def summary_table(state: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in summary_rows(state)]
    if state.get("rounds"):
        lines.append("")
    return "\n".join(lines + kind_lines(state) + tuned_lines(state) + verdict_lines(state))


KIND_HEADER = ["kind", "prompts", "current", "new"]


def kind_rows(by_kind: dict[str, dict[str, int]] | None) -> list[list[str]]:
    """The held-out pass rate per kind of check (`evaluate.checks_by_kind`) as table rows."""
    return [[kind, str(c["n"]), f"{c['current']} ({c['current'] / c['n']:.0%})", f"{c['new']} ({c['new'] / c['n']:.0%})"]
            for kind, c in (by_kind or {}).items()]


def kind_table(by_kind: dict[str, dict[str, int]] | None, heading: str) -> list[str]:
    """`kind_rows` as a markdown table under `heading`, or nothing where there are none."""
    rows = kind_rows(by_kind)
    if not rows:
        return []
    return ([heading, "", "| " + " | ".join(KIND_HEADER) + " |", "|---|---:|---:|---:|"]
            + ["| " + " | ".join(row) + " |" for row in rows] + [""])


def _last_by_kind(state: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    last = state.get("rounds", [])[-1:]
    return last[0].get("metrics", {}).get("checks", {}).get("by_kind") if last else None


def _kind_heading(state: dict[str, Any]) -> str:
    return f"Held-out pass rate by kind, round {state['rounds'][-1]['round']}"


def kind_lines(state: dict[str, Any]) -> list[str]:
    """The last round's held-out pass rate per kind, as a markdown table (nothing for one kind)."""
    by_kind = _last_by_kind(state)
    return kind_table(by_kind, _kind_heading(state) + ":") if by_kind else []


def tuned_lines(state: dict[str, Any]) -> list[str]:
    """Per round with `--preference-pairs tuned`: what the SFT adapter failed, and what the preference step
    trained on (`distill.stages.tuned_pairs`)."""
    lines = []
    for r in state.get("rounds", []):
        t = r.get("tuned_pairs")
        if t is not None:
            step = (f"{r['methods'][-1]} trained on {t['pairs']} pairs (prefs-tuned.jsonl)" if t["pairs"] else
                    f"no {r['methods'][-1]} step: the gate judged the SFT adapter")
            lines.append(f"round {r['round']}, tuned pairs: {t['pairs']} distinct samples of the SFT adapter's "
                         f"{t['samples']} on {t['prompts']} prompts with a verified answer fail their check; {step}")
    return lines + [""] if lines else []


def verdict_lines(state: dict[str, Any]) -> list[str]:
    """The last round's decision and why, and the adapter the run keeps."""
    lines = [f"round {r['round']} {'promoted' if r['decision']['promote'] else 'refused'}: "
             + "; ".join(r["decision"]["reasons"]) for r in state.get("rounds", [])[-1:]]
    return lines + [f"best adapter: {state.get('best_adapter') or 'none (the base student)'}"]


def _plots(root: Path, state: dict[str, Any]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distill.training.losslog import LOSS_LOG, read_loss_log

    made = []
    rounds = state.get("rounds", [])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for r in rounds:
        adapter = root / f"round-{r['round']}" / "adapter"
        if (adapter / LOSS_LOG).exists():
            rows = read_loss_log(adapter)
            ax.plot([x["step"] for x in rows], [x["loss"] for x in rows], label=f"round {r['round']}")
    ax.set(xlabel="step", ylabel="completion loss (nats/token)", title="Training loss")
    if ax.lines:
        ax.legend()
    made.append(_save(fig, root, PLOTS[0]))

    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.2))
    for ax, (name, title) in zip(axes, METRICS):
        xs, means, errs = [], [], [[], []]
        for r in rounds:
            d = r.get("metrics", {}).get(name, {}).get("delta")
            if d:
                xs.append(r["round"]); means.append(d["mean"])
                errs[0].append(d["mean"] - d["low"]); errs[1].append(d["high"] - d["mean"])
        if xs:
            ax.errorbar(xs, means, yerr=errs, fmt="o", capsize=4)
        ax.axhline(0, color="grey", linewidth=0.8)
        ax.set(title=title, xlabel="round", xticks=[r["round"] for r in rounds], xlim=(0.5, len(rounds) + 0.5))
        ax.title.set_fontsize(9)
    made.append(_save(fig, root, PLOTS[1]))

    fig, ax = plt.subplots(figsize=(6, 3.5))
    reasons = sorted({k for r in rounds for k in r.get("rejected", {})})
    bottom = [0] * len(rounds)
    for reason in reasons:
        heights = [r.get("rejected", {}).get(reason, 0) for r in rounds]
        ax.bar([r["round"] for r in rounds], heights, bottom=bottom, label=reason)
        bottom = [b + h for b, h in zip(bottom, heights)]
    ax.set(xlabel="round", ylabel="rows", title="Where rows were dropped, and why", xticks=[r["round"] for r in rounds])
    if reasons:
        ax.legend(fontsize=7)
    made.append(_save(fig, root, PLOTS[2]))
    preference = _preference_plot(root, rounds, read_loss_log)
    return made + ([preference] if preference else [])


def _preference_plot(root: Path, rounds: list[dict[str, Any]], read: Callable[[Path], list[dict[str, Any]]]
                     ) -> tuple[str, str] | None:
    """DPO's reward margin and accuracy per step (KTO's desirable minus undesirable reward), per round;
    None when no round trained a preference method."""
    import matplotlib.pyplot as plt

    logs = [(r["round"], method, read(root / f"round-{r['round']}" / f"adapter-{method}"))
            for r in rounds for method in r.get("methods", []) if method in ("dpo", "kto")
            and (root / f"round-{r['round']}" / f"adapter-{method}" / "loss.jsonl").exists()]
    if not logs:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    for number, method, rows in logs:
        margin = [x.get("margin", (x.get("desirable_reward") or 0) - (x.get("undesirable_reward") or 0)) for x in rows]
        left.plot([x["step"] for x in rows], margin, label=f"round {number} ({method})")
        if any("accuracy" in x for x in rows):
            right.plot([x["step"] for x in rows], [x.get("accuracy") for x in rows], label=f"round {number}")
    left.set(xlabel="step", ylabel="reward margin (chosen - rejected)", title="Reward margin")
    right.set(xlabel="step", ylabel="share of pairs ranked right", title="Accuracy (DPO)", ylim=(-0.05, 1.05))
    for ax in (left, right):
        if ax.lines:
            ax.legend(fontsize=7)
    return _save(fig, root, PLOTS[3])


def _save(fig: Any, root: Path, plot: tuple[str, str]) -> tuple[str, str]:
    fig.tight_layout()
    fig.savefig(root / plot[0], dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return plot


def _texts(root: Path, state: dict[str, Any]) -> tuple[str, str, list[str]]:
    """The report's title, context line and warnings."""
    title = f"Distillation report: {state.get('name', root.name)}"
    context = f"Held-out prompts: `{state.get('heldout')}`. Gate: {state.get('policy')}."
    warnings = [f"warning (round {r['round']}): {w}" for r in state.get("rounds", []) for w in r.get("warnings", [])]
    return title, context, warnings


def write_report(root: Path) -> Path:
    """Write report.md, report.html and their plots under `root`; returns the markdown report's path."""
    state = load(root)
    plots = _plots(root, state)
    title, context, warnings = _texts(root, state)
    lines = [f"# {title}", "", context, "", summary_table(state), ""]
    lines += [f"- {w}" for w in warnings]
    lines.append("")
    for name, caption in plots:
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
    path = root / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    (root / "report.html").write_text(_html(root, state, title, context, warnings, plots), encoding="utf-8")
    return path


def review_report(root: Path, review_href: Callable[[int], str]) -> str:
    """report.html with a link to each round's review page (`review_href(round)`), from rounds.json and
    the plots `write_report` drew (not drawn again): what the review server serves at /report.html."""
    state = load(root)
    title, context, warnings = _texts(root, state)
    plots = [(name, caption) for name, caption in PLOTS if (root / name).exists()]
    return _html(root, state, title, context, warnings, plots, review_href)


def _html(root: Path, state: dict[str, Any], title: str, context: str, warnings: list[str],
          plots: list[tuple[str, str]], review_href: Callable[[int], str] | None = None) -> str:
    """The report as one HTML file: the summary table, the decision, the review pages (links when
    `review_href` is given), warnings and inlined plots."""
    e = html.escape
    if review_href is None:
        review = ("<p>Review each round's rows in the browser: <code>distill review "
                  f"{e(str(state.get('name', root.name)))} --serve</code> (its /report.html links to each round).</p>")
    else:
        review = "<p>Review: " + " &middot; ".join(
            f'<a href="{e(review_href(r["round"]))}">round {e(str(r["round"]))}</a>' for r in state.get("rounds", [])) + "</p>"
    head = "".join(f"<th>{e(h)}</th>" for h in HEADER)
    body = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in summary_rows(state))
    kinds = kind_rows(_last_by_kind(state))
    kinds_html = (f"<h2>{e(_kind_heading(state))}</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in KIND_HEADER)
                  + "</tr>" + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in kinds)
                  + "</table>") if kinds else ""
    figures = "".join(
        f'<figure><img alt="{e(caption)}" src="data:image/png;base64,'
        f'{base64.b64encode((root / name).read_bytes()).decode()}"><figcaption>{e(caption)}</figcaption></figure>'
        for name, caption in plots)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>"
            "body{font-family:sans-serif;max-width:80em;margin:2em auto}table{border-collapse:collapse}"
            "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}figure{display:inline-block}"
            f"</style></head><body><h1>{e(title)}</h1><p>{e(context)}</p><table><tr>{head}</tr>{body}</table>{kinds_html}"
            + "".join(f"<p>{e(line)}</p>" for line in tuned_lines(state) + verdict_lines(state) if line) + review
            + "".join(f"<p><b>{e(w)}</b></p>" for w in warnings) + figures + "</body></html>\n")
