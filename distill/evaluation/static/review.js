// The review page of `distill review NAME --serve`. Plain JavaScript, no framework, no build step.
// Every text from the run (prompts, answers, critiques, revisions) is untrusted model output: it is
// only ever inserted with textContent (through el()), never as markup.
"use strict";

const params = new URLSearchParams(location.search);
const TOKEN = params.get("token") || "";
const state = { data: null, round: params.get("round"), current: null, editing: false };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  return node;
}
const $ = (id) => document.getElementById(id);

function status(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function load() {
  const query = new URLSearchParams({ token: TOKEN });
  if (state.round !== null) query.set("round", state.round);
  const response = await fetch("api/rows?" + query, { cache: "no-store" });
  if (!response.ok) { status(await response.text(), true); return; }
  state.data = await response.json();
  state.round = state.data.round;
  fillRounds();
  fillReasons();
  const wanted = decodeURIComponent(location.hash.slice(1));
  const rows = visible();
  const resume = rows.find((r) => r.id === wanted) || rows.find((r) => !decisionOf(r)) || rows[0];
  select(resume ? resume.id : null);
}

function fillRounds() {
  $("run").textContent = state.data.run;
  const select = $("round");
  select.replaceChildren(...state.data.rounds.map((r) => el("option", { value: r }, r === "" ? "(this run)" : "round " + r)));
  select.value = state.data.round;
  $("round-box").hidden = state.data.rounds.length < 2;
}

function fillReasons() {
  const filters = [...new Set(state.data.rejected.map((r) => r.filter))].sort();
  const select = $("filter-reason");
  const keep = select.value;
  select.replaceChildren(el("option", { value: "" }, "all"), ...filters.map((f) => el("option", { value: f }, f)));
  select.value = filters.includes(keep) ? keep : "";
}

const showingRejected = () => $("show-rejected").checked;
const decisionOf = (row) => (state.data.decisions[row.id] || null);

function visible() {
  if (!state.data) return [];
  if (showingRejected()) {
    const reason = $("filter-reason").value;
    return state.data.rejected.filter((r) => !reason || r.filter === reason);
  }
  const decision = $("filter-decision").value, check = $("filter-check").value;
  return state.data.rows.filter((r) => {
    const d = decisionOf(r);
    if (decision === "undecided" ? d : decision && (!d || d.decision !== decision)) return false;
    return !check || r.check === check;
  });
}

function renderList() {
  const rows = visible();
  const items = rows.map((row, i) => {
    const d = showingRejected() ? { decision: row.filter } : decisionOf(row);
    const label = d ? d.decision : "undecided";
    const badge = el("span", { class: "badge " + (showingRejected() ? "reject" : label) }, label);
    const item = el("li", { "data-id": row.id, "data-decision": label }, badge, row.prompt || row.reason);
    if (row.id === state.current) item.className = "current";
    item.addEventListener("click", () => select(row.id));
    return item;
  });
  $("list").replaceChildren(...items);
  const all = state.data ? state.data.rows.length : 0;
  const done = state.data ? state.data.rows.filter((r) => decisionOf(r)).length : 0;
  $("progress").textContent = `${done} of ${all} reviewed`;
  const current = $("list").querySelector("li.current");
  if (current) current.scrollIntoView({ block: "nearest" });
}

function renderRow() {
  const row = visible().find((r) => r.id === state.current);
  $("row").hidden = !row;
  $("empty").hidden = !!row;
  closeEditor();
  if (!row) return;
  $("row-id").textContent = row.id;
  $("row-source").textContent = row.source ? "source: " + row.source : "stage: " + row.stage;
  const d = showingRejected() ? null : decisionOf(row);
  $("row-decision").textContent = showingRejected() ? "" : "decision: " + (d ? d.decision : "undecided");
  $("prompt").textContent = row.prompt;
  $("original").textContent = row.original;
  $("critiques").replaceChildren(...(row.critiques.length ? row.critiques.map(critique) : [el("p", {}, "(none)")]));
  $("diff").replaceChildren(...row.diff.map(([op, text]) =>
    op === "eq" ? document.createTextNode(text) : el(op, {}, text)));
  if (showingRejected()) {
    $("reason").textContent = `${row.filter}: ${row.reason}`;
  } else {
    renderChecks(row);
  }
}

function critique(c) {
  return el("div", { class: "critique" },
    el("p", {}, el("b", {}, c.principle || "critique"), " — verdict: ", c.verdict || "?"),
    el("p", { class: "critique-text" }, c.critique),
    el("ul", { class: "issues" }, ...c.issues.map((issue) => el("li", {}, issue))));
}

function shown(value) {
  return value === null || value === undefined ? "—" : value === true ? "yes" : value === false ? "no" : String(value);
}

function renderChecks(row) {
  const judge = row.judge.length === 2
    ? [["judge, revision shown first", row.judge[0]], ["judge, revision shown second", row.judge[1]]]
    : [["judge", row.judge.length ? row.judge.join(", ") : null]];
  const lines = [
    ["revision passes the reference check", row.checks.reference_passed],
    ["original passed the reference check", row.checks.original_reference_passed],
    ["verified", row.checks.verified],
    ...judge,
  ];
  if (row.checks.judge_overruled) lines.push(["judge overruled", row.checks.judge_overruled]);
  $("checks").replaceChildren(...lines.map(([name, value]) => el("tr", {}, el("th", {}, name), el("td", {}, shown(value)))));
}

function select(id) {
  state.current = id;
  if (id) history.replaceState(null, "", "#" + encodeURIComponent(id));
  renderList();
  renderRow();
}

function move(step) {
  const rows = visible();
  const at = rows.findIndex((r) => r.id === state.current);
  const next = rows[Math.min(rows.length - 1, Math.max(0, at + step))];
  if (next) select(next.id);
}

async function decide(decision, edited, note) {
  if (showingRejected() || !state.current) return;
  const id = state.current;
  const rows = visible();
  const after = rows[rows.findIndex((r) => r.id === id) + 1];
  const response = await fetch("api/decision", {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-Distill-Token": TOKEN },
    body: JSON.stringify({ round: state.round, id, decision, edited: edited || "", note: note || "" }),
  });
  if (!response.ok) { status(await response.text(), true); return; }
  state.data.decisions = (await response.json()).decisions;
  status(`saved: ${decision || "cleared"} (${id})`);
  const stillShown = visible().some((r) => r.id === id);
  select(decision && after ? after.id : stillShown ? id : (visible()[0] || {}).id || null);
}

function openEditor() {
  const row = state.data && state.data.rows.find((r) => r.id === state.current);
  if (!row || showingRejected()) return;
  const d = decisionOf(row);
  $("editor").value = d && d.decision === "edit" ? d.edited : row.revision;
  $("note").value = d ? d.note : "";
  $("editor-box").hidden = false;
  state.editing = true;
  $("editor").focus();
}

function closeEditor() {
  if ($("editor-box").contains(document.activeElement)) document.activeElement.blur();
  $("editor-box").hidden = true;
  state.editing = false;
}

function keydown(event) {
  const typing = ["TEXTAREA", "INPUT", "SELECT"].includes(document.activeElement.tagName);
  if (state.editing && event.key === "Escape") { closeEditor(); event.preventDefault(); return; }
  if (state.editing && event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
    decide("edit", $("editor").value, $("note").value); event.preventDefault(); return;
  }
  if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
  const actions = { j: () => move(1), k: () => move(-1), a: () => decide("accept"), r: () => decide("reject"), e: openEditor };
  if (actions[event.key]) { actions[event.key](); event.preventDefault(); }
}

function rerender() {
  document.body.classList.toggle("rejected", showingRejected());
  const rows = visible();
  select(rows.some((r) => r.id === state.current) ? state.current : (rows[0] || {}).id || null);
}

document.addEventListener("DOMContentLoaded", () => {
  $("accept").addEventListener("click", () => decide("accept"));
  $("reject").addEventListener("click", () => decide("reject"));
  $("edit").addEventListener("click", openEditor);
  $("clear").addEventListener("click", () => decide(null));
  $("save-edit").addEventListener("click", () => decide("edit", $("editor").value, $("note").value));
  $("cancel-edit").addEventListener("click", closeEditor);
  for (const id of ["show-rejected", "filter-decision", "filter-check", "filter-reason"]) {
    $(id).addEventListener("change", () => { $(id).blur(); rerender(); });
  }
  $("round").addEventListener("change", () => {
    state.round = $("round").value;
    const query = new URLSearchParams({ token: TOKEN, round: state.round });
    history.replaceState(null, "", "?" + query);
    $("round").blur();
    load();
  });
  document.addEventListener("keydown", keydown);
  load().catch((err) => status(String(err), true));
});
