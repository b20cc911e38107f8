// The MATH^2 review page. It reads and writes only through the review API (/v1/review), with the reviewer's API
// key as `Authorization: Bearer` on every call: the key is asked for once and kept in sessionStorage (this tab,
// this browser session), and asked for again when the API refuses it (401); the server records the key's name
// and team as the reviewer. Model text is untrusted: it only ever reaches the DOM as textContent, and KaTeX
// (trust off) turns the $...$ / \(...\) / $$...$$ / \[...\] parts of those text nodes into math.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const MATH = {
    delimiters: [
      { left: "$$", right: "$$", display: true },
      { left: "\\[", right: "\\]", display: true },
      { left: "\\(", right: "\\)", display: false },
      { left: "$", right: "$", display: false },
    ],
    throwOnError: false,
    trust: false,
    strict: "ignore",
  };
  const page = { items: [], index: -1, cursor: null, detail: null, polling: null };

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  // text with math delimiters: text nodes only, then KaTeX on the delimited parts
  function mathText(node, text) {
    node.textContent = text || "";
    if (window.renderMathInElement) window.renderMathInElement(node, MATH);
    return node;
  }

  // an answer is LaTeX without delimiters ("\frac{3}{4}", "0.75"), unless it brings its own
  function mathAnswer(node, text) {
    text = text || "";
    if (/\$|\\\(|\\\[/.test(text) || !window.katex) return mathText(node, text);
    node.textContent = "";
    window.katex.render(text, node, { throwOnError: false, trust: false, strict: "ignore" });
    return node;
  }

  function status(message, error) {
    $("status").textContent = message;
    $("status").className = error ? "error" : "";
  }

  // ---- the API key ----
  const KEY = "skillmix.key";
  const apiKey = () => sessionStorage.getItem(KEY) || "";

  function showKey() {
    const key = apiKey();
    $("key-shown").textContent = key ? `key ${key.slice(0, 12)}…` : "no key";
  }

  function askKey(why) {
    $("key-why").textContent = why;
    $("key-form").hidden = false;
    $("api-key").value = "";
    $("api-key").focus();
    showKey();
  }

  function useKey(event) {
    event.preventDefault();
    const key = $("api-key").value.trim();
    if (!key) {
      status("paste your API key (it starts with smx_)", true);
      return;
    }
    sessionStorage.setItem(KEY, key);
    $("api-key").value = "";
    $("key-form").hidden = true;
    showKey();
    loadQueue(false);
  }

  async function api(method, path, body) {
    if (!apiKey()) {
      askKey("Enter your API key to review: the review history records its name and team.");
      throw new Error("an API key is needed");
    }
    const headers = { Accept: "application/json", Authorization: `Bearer ${apiKey()}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    const data = await response.json().catch(() => ({}));
    if (response.status === 401) {
      sessionStorage.removeItem(KEY);
      askKey(`The API refused the key (${data.detail || "401"}). Enter a valid key.`);
      throw new Error("401: the key was refused; enter another");
    }
    if (response.status === 409) {
      const err = new Error(data.detail || "the item changed; reloaded");
      err.current = data.item;
      throw err;
    }
    if (!response.ok) {
      const detail = Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : data.detail;
      throw new Error(`${response.status}: ${detail || response.statusText}`);
    }
    return data;
  }

  const itemPath = (item, action) => `/v1/review/${encodeURIComponent(item.job_id)}/${encodeURIComponent(item.id)}` +
    (action ? `/${action}` : "");

  // ---- queue ----
  async function loadQueue(more) {
    const params = new URLSearchParams({ limit: "50" });
    for (const [key, id] of [["job", "f-job"], ["skill", "f-skill"], ["state", "f-state"]]) {
      const value = $(id).value.trim();
      if (value) params.set(key, value);
    }
    if (more && page.cursor) params.set("cursor", page.cursor);
    try {
      const data = await api("GET", `/v1/review?${params}`);
      page.items = more ? page.items.concat(data.data) : data.data;
      page.cursor = data.next_cursor;
      $("more").hidden = !page.cursor;
      drawQueue();
      status(`${page.items.length} item(s)${page.cursor ? " (more available)" : ""}`);
      if (!more) await select(page.items.length ? 0 : -1);
    } catch (err) {
      status(err.message, true);
    }
  }

  function drawQueue() {
    const list = $("queue");
    list.replaceChildren();
    page.items.forEach((item, i) => {
      const li = el("li");
      li.dataset.id = item.id;
      if (i === page.index) li.classList.add("current");
      li.append(el("span", item.state.replace("_", " "), `state ${item.state}`));
      const title = item.problem.length > 90 ? item.problem.slice(0, 90) + "…" : item.problem;
      li.append(el("b", `#${item.index} `), mathText(el("span"), title));
      li.addEventListener("click", () => select(i));
      list.append(li);
    });
  }

  // ---- one item ----
  async function select(i) {
    stopPolling();
    closeForms();
    page.index = i;
    if (i < 0 || i >= page.items.length) {
      $("item").hidden = true;
      page.detail = null;
      drawQueue();
      return;
    }
    try {
      page.detail = await api("GET", itemPath(page.items[i]));
      page.items[i] = page.detail.item;
      drawQueue();
      drawItem();
      const current = $("queue").children[i];
      if (current) current.scrollIntoView({ block: "nearest" });
    } catch (err) {
      status(err.message, true);
    }
  }

  function drawItem() {
    const { item, example, history } = page.detail;
    $("item").hidden = false;
    $("item-state").textContent = item.state.replace("_", " ");
    $("item-state").className = `state ${item.state}`;
    $("item-id").textContent = `${item.job_id} #${item.index}`;
    $("item-version").textContent = item.version;
    $("item-skills").textContent = item.skills.join(" + ");
    $("item-reason").hidden = !item.reject_reason;
    $("item-reason").textContent = item.reject_reason ? `Rejected: ${item.reject_reason}` : "";
    mathText($("problem"), item.problem);
    mathText($("solution"), item.solution);
    mathAnswer($("answer"), item.answer);
    const skill = $("help-skill");
    skill.replaceChildren(...item.skills.map((s) => { const o = el("option", s); o.value = s; return o; }));
    if (item.skills.length > 1) skill.value = item.skills[1];
    drawSuggestions(item);
    drawStages(example.math || {});
    drawVersions(history);
  }

  function drawSuggestions(item) {
    const box = $("suggestions");
    box.replaceChildren();
    for (const s of item.suggestions.slice().reverse()) {
      const div = el("div", null, "suggestion");
      div.append(el("b", `${s.kind.replaceAll("_", " ")} `), el("span", `(asked by ${s.requested_by}, ${s.status}, ${s.llm_calls} call(s))`));
      if (s.note) div.append(el("div", `Note: ${s.note}`));
      if (s.text) div.append(mathText(el("div", null, "math-text"), s.text));
      for (const [field, value] of Object.entries(s.proposed)) {
        const row = el("div");
        row.append(el("i", `proposed ${field}: `));
        row.append(field === "answer" ? mathAnswer(el("span"), value) : mathText(el("span", null, "math-text"), value));
        div.append(row);
      }
      if (Object.keys(s.proposed).length) {
        const use = el("button", "Edit with this proposal");
        use.type = "button";
        use.addEventListener("click", () => openEdit(s.proposed));
        div.append(use);
      }
      box.append(div);
    }
  }

  function stage(title, fields) {
    const div = el("div", null, "stage");
    div.append(el("b", title));
    for (const [name, value, kind] of fields) {
      if (value === undefined || value === null || value === "") continue;
      const row = el("div");
      row.append(el("i", `${name}: `));
      if (kind === "answer") row.append(mathAnswer(el("span"), String(value)));
      else if (kind === "raw") row.append(el("pre", String(value)));
      else row.append(mathText(el("span", null, "math-text"), String(value)));
      div.append(row);
    }
    return div;
  }

  function drawStages(math) {
    const body = $("stages-body");
    body.replaceChildren();
    if (math.pair_check) {
      body.append(stage("Pair check", [["valid", String(math.pair_check.valid)], ["reasoning", math.pair_check.reasoning]]));
    }
    (math.question_turns || []).forEach((t, i) => body.append(stage(`Question turn ${i + 1}`, [
      ["question", t.question], ["answer", t.answer, "answer"], ["solvable", t.solvable === null ? "" : String(t.solvable)],
      ["critique", t.critique], ["response", t.response, "raw"],
    ])));
    if (math.sceptic) {
      body.append(stage("Sceptic", [["flaws", math.sceptic.flaws], ["answer", math.sceptic.answer, "answer"]]));
    }
    (math.validations || []).forEach((v, i) => body.append(stage(`Validation ${i + 1}`, [
      ["verdict", v.verdict ? "Yes" : "No"], ["reasoning", v.reasoning],
    ])));
    (math.solves || []).forEach((s, i) => body.append(stage(`Solve ${i + 1}`, [
      ["answer", s.answer, "answer"], ["response", s.response, "raw"],
    ])));
    if (math.vote) {
      body.append(stage("Vote", [
        ["majority answer", math.vote.answer, "answer"], ["votes", String(math.vote.votes)],
        ["groups", JSON.stringify(math.vote.groups)], ["matches the question's answer", String(math.vote.matches_question)],
      ]));
    }
  }

  function drawVersions(history) {
    const list = $("versions-body");
    list.replaceChildren();
    for (const v of history) {
      const li = el("li");
      li.dataset.version = v.version;
      li.append(el("b", `v${v.version} ${v.action}`), el("span", ` by ${v.by} at ${new Date(v.at).toLocaleString()}`));
      if (v.reason) li.append(el("div", `reason: ${v.reason}`));
      for (const [field, change] of Object.entries(v.changes || {})) {
        const show = (value) => (typeof value === "string" ? `“${value}”` : JSON.stringify(value));
        li.append(el("div", `${field}: ${show(change.old)} → ${show(change.new)}`));
      }
      list.append(li);
    }
  }

  // ---- writes ----
  function current() {
    return page.detail && page.detail.item;
  }

  async function write(method, action, body, done) {
    const item = current();
    if (!item) return;
    try {
      const updated = await api(method, itemPath(item, action), { expected_version: item.version, ...body });
      page.items[page.index] = updated;
      status(done(updated));
      return updated;
    } catch (err) {
      status(err.message, true);
      if (err.current) await select(page.index); // someone else changed it: show what is there now
      return null;
    }
  }

  async function accept() {
    const updated = await write("POST", "accept", {}, (u) => `accepted #${u.index} (version ${u.version})`);
    if (updated) await select(Math.min(page.index + 1, page.items.length - 1));
  }

  function openReject() {
    if (!current()) return;
    closeForms();
    $("reject-form").hidden = false;
    $("reject-reason").value = "";
    $("reject-reason").focus();
  }

  async function reject(event) {
    event.preventDefault();
    const reason = $("reject-reason").value.trim();
    if (!reason) {
      status("a rejection needs a reason", true);
      return;
    }
    const updated = await write("POST", "reject", { reason }, (u) => `rejected #${u.index}: ${u.reject_reason}`);
    if (updated) await select(Math.min(page.index + 1, page.items.length - 1));
  }

  const FIELDS = ["problem", "solution", "answer"];

  function preview(field) {
    const text = $(`e-${field}`).value;
    if (field === "answer") mathAnswer($(`p-${field}`), text);
    else mathText($(`p-${field}`), text);
  }

  function openEdit(proposed) {
    const item = current();
    if (!item) return;
    closeForms();
    for (const field of FIELDS) {
      $(`e-${field}`).value = (proposed && proposed[field]) || item[field];
      preview(field);
    }
    $("view").hidden = true;
    $("edit").hidden = false;
    $("e-answer").focus();
  }

  async function saveEdit(event) {
    if (event) event.preventDefault();
    const item = current();
    const changes = {};
    for (const field of FIELDS) {
      const value = $(`e-${field}`).value;
      if (value !== item[field]) changes[field] = value;
    }
    if (!Object.keys(changes).length) {
      closeForms();
      return;
    }
    const updated = await write("PATCH", "", changes, (u) => `saved #${u.index} (version ${u.version})`);
    if (updated) await select(page.index);
  }

  function openHelp() {
    if (!current()) return;
    closeForms();
    $("help-form").hidden = false;
    $("help-kind").focus();
  }

  async function askHelp(event) {
    event.preventDefault();
    const item = current();
    const kind = $("help-kind").value;
    const body = { kind, note: $("help-note").value };
    if (kind === "make_skill_necessary") body.skill = $("help-skill").value;
    try {
      const accepted = await api("POST", itemPath(item, "help"), body);
      closeForms();
      status(`asked the LLM (${kind}); waiting for its suggestion…`);
      pollFor(item, accepted.suggestion_id, Date.now() + 120000);
    } catch (err) {
      status(err.message, true);
    }
  }

  function pollFor(item, suggestionId, deadline) {
    page.polling = setTimeout(async () => {
      if (!current() || current().id !== item.id) return;
      try {
        const detail = await api("GET", itemPath(item));
        if (detail.item.suggestions.some((s) => s.id === suggestionId)) {
          page.detail = detail;
          page.items[page.index] = detail.item;
          drawItem();
          status("the LLM's suggestion is in (nothing is changed until you edit and save)");
          return;
        }
      } catch (err) {
        status(err.message, true);
      }
      if (Date.now() < deadline) pollFor(item, suggestionId, deadline);
      else status("no suggestion yet; reload the item later", true);
    }, 1000);
  }

  function stopPolling() {
    if (page.polling) clearTimeout(page.polling);
    page.polling = null;
  }

  function closeForms() {
    for (const id of ["edit", "reject-form", "help-form"]) $(id).hidden = true;
    $("view").hidden = false;
  }

  // ---- keyboard ----
  const KEYS = {
    a: accept, r: openReject, e: () => openEdit(), h: openHelp,
    j: () => select(Math.min(page.index + 1, page.items.length - 1)),
    k: () => select(Math.max(page.index - 1, 0)),
    "?": () => { status($("keys").textContent); },
  };
  KEYS.n = KEYS.j; KEYS.ArrowDown = KEYS.j; KEYS.p = KEYS.k; KEYS.ArrowUp = KEYS.k;

  document.addEventListener("keydown", (event) => {
    const typing = event.target.closest && event.target.closest("input, textarea, select");
    if (event.key === "Escape") {
      closeForms();
      if (typing) event.target.blur();
      return;
    }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey) && !$("edit").hidden) {
      event.preventDefault();
      saveEdit();
      return;
    }
    if (typing || event.ctrlKey || event.metaKey || event.altKey) return;
    const action = KEYS[event.key];
    if (action) {
      event.preventDefault();
      action();
    }
  });

  // ---- wiring ----
  document.addEventListener("DOMContentLoaded", () => {
    const query = new URLSearchParams(location.search);
    $("f-job").value = query.get("job") || "";
    $("f-skill").value = query.get("skill") || "";
    if (query.has("state")) $("f-state").value = query.get("state");
    $("key-form").addEventListener("submit", useKey);
    $("key-change").addEventListener("click", () => askKey("Enter another API key (kept for this browser session)."));
    $("filters").addEventListener("submit", (event) => { event.preventDefault(); loadQueue(false); });
    $("more").addEventListener("click", () => loadQueue(true));
    $("do-accept").addEventListener("click", accept);
    $("do-reject").addEventListener("click", openReject);
    $("do-edit").addEventListener("click", () => openEdit());
    $("do-help").addEventListener("click", openHelp);
    $("reject-form").addEventListener("submit", reject);
    $("reject-cancel").addEventListener("click", closeForms);
    $("edit").addEventListener("submit", saveEdit);
    $("edit-cancel").addEventListener("click", closeForms);
    $("help-form").addEventListener("submit", askHelp);
    $("help-cancel").addEventListener("click", closeForms);
    for (const field of FIELDS) $(`e-${field}`).addEventListener("input", () => preview(field));
    showKey();
    if (apiKey()) loadQueue(false);
    else askKey("Enter your API key to review: the review history records its name and team. It is kept for this browser session only.");
  });
})();
