// The console: log in, discussions (list, start, watch live, stop, verdict), files. Routes: / /d/<id> /files.

import * as api from "./api.js";
import { lang, roleName, t } from "./i18n.js";
import { DiscussionStream } from "./live.js";
import { renderMarkdown } from "./markdown.js";

const ACTIVE = new Set(["running", "stopping"]);
const DEFAULT_PANEL = ["bull", "bear", "risk"];
const PAGE = 20;

const view = document.getElementById("view");
const banner = document.getElementById("banner");
let stream = null; // the live stream of the discussion on screen, if any
let roles = null; // GET /api/roles, fetched once
// Where the console is served: "/", or "/console/" when the team's own front end takes "/" (the appliance rewrites
// this meta tag then, docs/frontend.md). Routes below are written from "/" and go through at()/route().
const ROOT = document.querySelector('meta[name="console-root"]')?.content || "/";

/** A console route ("/files") as the page's path under ROOT ("/console/files"). */
function at(route) {
  return ROOT + route.slice(1);
}

/** The console route the page's path names ("/console/files" → "/files"). */
function currentRoute() {
  const path = location.pathname;
  return path.startsWith(ROOT) ? "/" + path.slice(ROOT.length) : path;
}

/** An element: h("p", {class: "x", onclick: f}, "text", child). Text is always set as text, never as HTML. */
function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on")) el.addEventListener(name.slice(2), value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

function show(...children) {
  view.replaceChildren(...children);
}

function notify(message, kind = "error") {
  banner.textContent = message;
  banner.className = kind;
  banner.hidden = false;
}

function clearNotice() {
  banner.hidden = true;
  banner.textContent = "";
}

/** Show `path` (a page path, as at() makes it or a link's href holds it). */
function navigate(path) {
  if (location.pathname !== path) history.pushState(null, "", path);
  clearNotice();
  render();
}

/** A moment as a <time>, in the page's language. */
function when(iso) {
  return h("time", { datetime: iso }, new Date(iso).toLocaleString(lang === "zh" ? "zh-CN" : "en"));
}

function statusBadge(status) {
  return h("span", { class: `badge status-${status}`, id: "discussion-status", dataset: { status } }, t(`status.${status}`));
}

async function roleList() {
  roles ??= await api.getJson("/api/roles");
  return roles;
}

// --- log in / create account ---------------------------------------------------------------------

function loginView(mode = "login") {
  const email = h("input", { type: "email", name: "email", autocomplete: "username", required: true });
  const password = h("input", {
    type: "password",
    name: "password",
    minlength: 8,
    required: true,
    autocomplete: mode === "login" ? "current-password" : "new-password",
  });
  // Only for a site whose sign-up needs an invitation; empty otherwise.
  const invitation = h("input", { type: "text", name: "invitation", autocomplete: "off", maxlength: 200 });
  const submit = h("button", { type: "submit", id: "auth-submit" }, t(mode === "login" ? "auth.login" : "auth.register"));
  const form = h(
    "form",
    {
      class: "card narrow",
      id: `${mode}-form`,
      onsubmit: async (event) => {
        event.preventDefault();
        submit.disabled = true;
        try {
          if (mode === "register") await api.register(email.value, password.value, invitation.value.trim());
          await api.login(email.value, password.value);
          clearNotice();
          if (mode === "register") notify(t("auth.registered"), "info");
          render();
        } catch (error) {
          notify(error.message);
        } finally {
          submit.disabled = false;
        }
      },
    },
    h("h1", {}, t(mode === "login" ? "auth.login" : "auth.register")),
    h("label", {}, t("auth.email"), email),
    h("label", {}, t("auth.password"), password),
    ...(mode === "register" ? [h("label", {}, t("auth.invitation"), invitation)] : []),
    submit,
    h(
      "button",
      { type: "button", class: "link", id: "auth-switch", onclick: () => show(loginView(mode === "login" ? "register" : "login")) },
      t(mode === "login" ? "auth.toRegister" : "auth.toLogin"),
    ),
  );
  return form;
}

// --- discussions: list and start ---------------------------------------------------------------

async function homeView() {
  const list = h("ul", { class: "discussions", id: "discussions" });
  const more = h("button", { type: "button", class: "link", hidden: true }, t("list.more"));
  let offset = 0;
  async function loadPage() {
    const page = await api.getJson(`/api/discussions?limit=${PAGE}&offset=${offset}`);
    offset += page.length;
    for (const d of page) {
      list.append(
        h(
          "li",
          {},
          h("a", { href: at(`/d/${d.id}`), "data-link": true }, d.topic),
          h("span", { class: "meta" }, statusBadge(d.status), " ", when(d.created_at)),
        ),
      );
    }
    more.hidden = page.length < PAGE;
    if (offset === 0) list.append(h("li", { class: "muted" }, t("list.empty")));
  }
  more.addEventListener("click", () => loadPage().catch((e) => notify(e.message)));
  const [form] = await Promise.all([newDiscussionForm(), loadPage()]);
  show(form, h("section", { class: "card" }, h("h2", {}, t("list.title")), list, more));
}

async function newDiscussionForm() {
  const available = await roleList();
  const topic = h("textarea", { name: "topic", rows: 3, minlength: 3, maxlength: 2000, required: true });
  const boxes = available.map((role) =>
    h("input", { type: "checkbox", name: "panel", value: role.key, checked: DEFAULT_PANEL.includes(role.key) }),
  );
  const rounds = h("select", { name: "rounds" }, [1, 2, 3].map((n) => h("option", { value: n }, String(n))));
  const submit = h("button", { type: "submit", id: "start" }, t("new.start"));
  return h(
    "form",
    {
      class: "card",
      id: "new-discussion",
      onsubmit: async (event) => {
        event.preventDefault();
        const panel = boxes.filter((b) => b.checked).map((b) => b.value);
        if (panel.length === 0) return notify(t("new.needPanel"));
        submit.disabled = true;
        try {
          const body = { topic: topic.value.trim(), panel, max_rounds: Number(rounds.value) };
          const created = await api.postJson("/api/discussions", body);
          navigate(at(`/d/${created.id}`));
        } catch (error) {
          notify(error.message);
          submit.disabled = false;
        }
      },
    },
    h("h2", {}, t("new.title")),
    h("label", {}, t("new.topic"), topic),
    h(
      "fieldset",
      { class: "panel-choice" },
      h("legend", {}, t("new.panel")),
      available.map((role, i) => h("label", { class: "check", title: role.instructions }, boxes[i], roleName(role.key, role.name))),
    ),
    h("label", { class: "inline" }, t("new.rounds"), rounds),
    submit,
  );
}

// --- one discussion, live ------------------------------------------------------------------------

async function discussionView(id) {
  let detail;
  try {
    detail = await api.getJson(`/api/discussions/${id}`);
  } catch (error) {
    if (error.status === 404 || error.status === 422) return notFound();
    throw error;
  }
  const names = Object.fromEntries((await roleList()).map((r) => [r.key, r.name]));
  const agents = [...detail.panel, "moderator"];
  const turns = new Map(); // turn_index -> {el, body, text, reasoning, reasoningBox}
  const chips = new Map(
    agents.map((key) => [key, h("li", { class: "agent", dataset: { agent: key, state: "waiting" } }, "")]),
  );
  const transcript = h("div", { id: "transcript" });
  // Moved into the moderator's turn once it starts: that turn shows the verdict card, never its JSON. The turn
  // sits above the transcript, where the verdict is read first.
  const verdictBox = h("section", { class: "verdict", id: "verdict", hidden: true });
  const moderatorSlot = h("div", { id: "moderator-slot" }, verdictBox);
  const errorBox = h("p", { class: "discussion-error", id: "discussion-error", hidden: true });
  const conn = h("span", { class: "conn", id: "conn", dataset: { state: "closed" } });
  const stop = h("button", { type: "button", class: "danger", id: "stop" }, t("d.stop"));
  const statusSlot = h("span", {}, statusBadge(detail.status));

  function setAgent(key, state, vars = {}) {
    const chip = chips.get(key);
    if (!chip) return;
    chip.dataset.state = state;
    chip.replaceChildren(h("strong", {}, roleName(key, names[key])), " ", h("span", {}, t(`agent.${state}`, vars)));
  }
  agents.forEach((key) => setAgent(key, "waiting"));

  function turn(index, role) {
    let entry = turns.get(index);
    if (!entry) {
      const moderator = role === "moderator";
      const round = moderator ? null : Math.floor(index / detail.panel.length) + 1;
      const body = moderator ? h("p", { class: "turn-text muted" }, t("d.moderating")) : h("div", { class: "turn-text" });
      const el = h(
        "article",
        { class: "turn", dataset: { turn: index, role, state: "streaming" } },
        h("header", {}, h("strong", {}, roleName(role, names[role])), round ? h("span", { class: "meta" }, ` #${round}`) : null),
        body,
        moderator ? verdictBox : null,
      );
      entry = { el, body, text: "", reasoning: "", reasoningBox: null };
      turns.set(index, entry);
      if (moderator) moderatorSlot.replaceChildren(el);
      else {
        const later = [...turns.keys()].filter((k) => k > index && turns.get(k).el.parentElement === transcript);
        transcript.insertBefore(el, later.length ? turns.get(Math.min(...later)).el : null);
      }
    }
    return entry;
  }

  /** The turn's reasoning, folded above its text (a <details> made on first use). */
  function showReasoning(entry, text) {
    entry.reasoning = text;
    if (!entry.reasoningBox) {
      entry.reasoningBox = h("div", { class: "reasoning-text" });
      entry.body.before(h("details", { class: "reasoning" }, h("summary", {}, t("turn.reasoning")), entry.reasoningBox));
    }
    entry.reasoningBox.textContent = text;
  }

  function finishTurn(message) {
    const entry = turn(message.turn_index, message.role);
    // The stored message is the truth; streamed text that differs from it is replaced, and marked so.
    if (entry.text !== message.content) {
      if (entry.text) entry.el.dataset.repaired = "true";
      entry.text = message.content;
    }
    if (message.reasoning) showReasoning(entry, message.reasoning);
    // Plain text while it streamed (cheap for long turns); Markdown once, now that it is complete.
    if (message.role === "moderator") entry.body.hidden = message.status !== "completed"; // the verdict replaces it
    else if (entry.text) renderMarkdown(entry.body, entry.text);
    else entry.body.textContent = t("d.noSpeech");
    entry.el.dataset.state = message.status;
    entry.el.dataset.messageId = message.id;
    if (message.status === "failed") {
      entry.el.append(h("p", { class: "turn-error" }, t(message.role === "moderator" ? "turn.moderatorFailed" : "turn.failed")));
      if (message.error) {
        const reason = h("span", { class: "turn-reason" }, message.error); // the service's words, as it gave them
        entry.el.append(h("details", { class: "meta" }, h("summary", {}, t("turn.why")), reason));
      }
    }
    setAgent(message.role, { completed: "done", failed: "failed", stopped: "stopped" }[message.status] || "done");
  }

  function showVerdict(verdict) {
    verdictBox.hidden = false;
    const moderatorTurn = [...turns.values()].find((entry) => entry.el.dataset.role === "moderator");
    if (moderatorTurn && moderatorTurn.el.dataset.state !== "failed") moderatorTurn.body.hidden = true;
    if (!verdict) {
      verdictBox.replaceChildren(h("h2", {}, t("d.verdict")), h("p", { class: "muted" }, t("d.noVerdict")));
      return;
    }
    const confidence = typeof verdict.confidence === "number" ? Math.round(verdict.confidence * 100) + "%" : "";
    verdictBox.replaceChildren(
      h("h2", {}, t("d.verdict")),
      h(
        "p",
        {},
        h("span", { class: `badge stance-${verdict.stance}` }, t(`stance.${verdict.stance}`)),
        " ",
        confidence ? t("d.confidence", { value: confidence }) : "",
      ),
      h("p", { class: "summary" }, String(verdict.summary ?? "")),
    );
  }

  let ended = false; // set by discussion_finished, which may arrive before the stop request's answer

  function finished(status, verdict, error) {
    ended = true;
    statusSlot.replaceChildren(statusBadge(status));
    if (status === "failed") {
      errorBox.textContent = error ? t("d.failed", { reason: error }) : t("d.failedNoReason");
      errorBox.hidden = false;
    }
    stop.hidden = true;
    conn.hidden = true;
    for (const [key, chip] of chips) {
      if (chip.dataset.state === "speaking" || chip.dataset.state === "queued") setAgent(key, "stopped");
      else if (chip.dataset.state === "waiting") setAgent(key, "skipped");
    }
    if (status === "completed" || verdict) showVerdict(verdict);
  }

  function onEvent(event) {
    switch (event.type) {
      case "queued":
        setAgent(event.role, "queued", { position: event.position });
        break;
      case "agent_started": {
        // Again for a turn it already showed: the turn was cut off by a handover to another worker and
        // starts over there, so the text streamed so far goes.
        const entry = turn(event.turn_index, event.role);
        entry.text = "";
        if (event.role !== "moderator") entry.body.textContent = "";
        entry.reasoningBox?.parentElement.remove();
        entry.reasoning = "";
        entry.reasoningBox = null;
        setAgent(event.role, "speaking");
        break;
      }
      case "token": {
        const entry = turn(event.turn_index, event.role);
        entry.text += event.text;
        if (event.role !== "moderator") entry.body.textContent = entry.text; // the moderator's is JSON: not shown
        break;
      }
      case "reasoning": {
        const entry = turn(event.turn_index, event.role);
        showReasoning(entry, entry.reasoning + event.text);
        break;
      }
      case "message_completed":
      case "agent_failed":
        finishTurn(event.message);
        break;
      case "discussion_finished":
        finished(event.status, event.verdict, event.error);
        break;
      default:
        break; // newer event types: ignored by this console
    }
  }

  stop.addEventListener("click", async () => {
    stop.disabled = true;
    stop.textContent = t("d.stopping");
    try {
      const { status } = await api.request("POST", `/api/discussions/${id}/stop`).then((r) => r.json());
      // "stopping" must not overwrite the final status the stream delivered meanwhile.
      if (!ended) statusSlot.replaceChildren(statusBadge(status));
    } catch (error) {
      notify(error.message);
      stop.disabled = false;
      stop.textContent = t("d.stop");
    }
  });

  show(
    h("p", {}, h("a", { href: at("/"), "data-link": true }, `← ${t("d.back")}`)),
    h(
      "section",
      { class: "card", id: "discussion", dataset: { id } },
      h("h1", { class: "topic" }, detail.topic),
      h("p", { class: "meta" }, statusSlot, " ", conn, " ", when(detail.created_at)),
      errorBox,
      h("ul", { class: "agents", id: "agents" }, [...chips.values()]),
      stop,
    ),
    moderatorSlot,
    transcript,
  );

  if (ACTIVE.has(detail.status)) {
    // Live: replay every event from the start, so a reload shows exactly what was streamed, then follow.
    if (detail.status === "stopping") stop.disabled = true;
    stream = new DiscussionStream(id, {
      onEvent,
      onState: (state) => {
        if (state === "gone") return void notFound();
        conn.dataset.state = state;
        conn.textContent = t(`conn.${state}`);
      },
    });
    stream.start();
  } else {
    for (const message of detail.messages) finishTurn(message);
    finished(detail.status, detail.verdict, detail.error);
  }
}

function notFound() {
  stream?.close();
  stream = null;
  show(
    h("section", { class: "card", id: "not-found" }, h("h1", {}, t("d.notFound"))),
    h("p", {}, h("a", { href: at("/"), "data-link": true }, `← ${t("d.back")}`)),
  );
}

// --- files ---------------------------------------------------------------------------------------

function size(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function download(file) {
  const blob = await (await api.request("GET", `/api/files/${file.id}`)).blob();
  const url = URL.createObjectURL(blob);
  const link = h("a", { href: url, download: file.filename });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

async function filesView() {
  const files = await api.getJson("/api/files");
  // The native picker's button and "no file chosen" speak the browser's language, not the page's: ours instead.
  const chosen = h("span", { class: "chosen muted", id: "file-chosen" }, t("files.none"));
  const picker = h("input", {
    type: "file",
    name: "file",
    required: true,
    id: "file-input",
    onchange: () => {
      chosen.textContent = picker.files[0]?.name ?? t("files.none");
    },
  });
  const upload = h(
    "form",
    {
      class: "card",
      id: "upload",
      onsubmit: async (event) => {
        event.preventDefault();
        const file = picker.files[0];
        if (!file) return;
        const form = new FormData();
        form.append("file", file);
        try {
          await api.request("POST", "/api/files", { form });
          await filesView();
          notify(t("files.uploaded", { name: file.name }), "info");
        } catch (error) {
          notify(error.message);
        }
      },
    },
    h("h2", {}, t("files.title")),
    h("label", { class: "picker" }, picker, h("span", { class: "button" }, t("files.choose")), chosen),
    h("button", { type: "submit" }, t("files.upload")),
  );
  const act = (fn) => () => fn().catch((error) => notify(error.message));
  const rows = files.map((f) =>
    h(
      "li",
      { dataset: { file: f.id } },
      h("span", { class: "name" }, f.filename),
      h("span", { class: "meta" }, `${size(f.size_bytes)} · `, when(f.created_at)),
      h("span", { class: "actions" },
        h("button", { type: "button", class: "link", onclick: act(() => download(f)) }, t("files.download")),
        h("button", {
          type: "button",
          class: "link danger",
          onclick: act(async () => {
            await api.request("DELETE", `/api/files/${f.id}`);
            await filesView();
          }),
        }, t("files.delete")),
      ),
    ),
  );
  show(upload, h("section", { class: "card" }, h("ul", { class: "files", id: "files" }, rows.length ? rows : h("li", { class: "muted" }, t("files.empty")))));
}

// --- account: delete it with all its data ----------------------------------------------------------

async function accountView() {
  const me = await api.getJson("/api/account");
  const password = h("input", { type: "password", name: "password", required: true, autocomplete: "current-password" });
  const confirm = h("button", { type: "submit", class: "danger", id: "delete-account" }, t("account.delete"));
  const form = h(
    "form",
    {
      class: "card narrow",
      id: "account",
      onsubmit: async (event) => {
        event.preventDefault();
        confirm.disabled = true;
        try {
          await api.deleteAccount(password.value);
          document.getElementById("nav").hidden = true;
          show(loginView());
          notify(t("account.deleted"), "info");
        } catch (error) {
          notify(error.message);
        } finally {
          confirm.disabled = false;
        }
      },
    },
    h("h1", {}, t("account.title")),
    h("p", {}, t("account.who", { email: me.email })),
    h("p", { class: "muted" }, t("account.deleteWhat")),
    h("label", {}, t("account.password"), password),
    confirm,
  );
  show(form);
}

// --- shell ---------------------------------------------------------------------------------------

async function render() {
  stream?.close();
  stream = null;
  const nav = document.getElementById("nav");
  nav.hidden = !api.hasSession();
  if (!api.hasSession()) return show(loginView());
  const path = currentRoute();
  const match = path.match(/^\/d\/([0-9a-fA-F-]{36})\/?$/);
  try {
    if (match) await discussionView(match[1]);
    else if (path === "/files") await filesView();
    else if (path === "/account") await accountView();
    else await homeView();
  } catch (error) {
    if (!api.hasSession()) return; // the session ended: onSignedOut already shows the login
    notify(error.message);
  }
}

function setupShell() {
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.title = t("brand");
  document.getElementById("brand").textContent = t("brand");
  document.getElementById("nav-discussions").textContent = t("nav.discussions");
  document.getElementById("nav-files").textContent = t("nav.files");
  document.getElementById("nav-account").textContent = t("nav.account");
  for (const link of document.querySelectorAll("header a[data-link]")) {
    link.setAttribute("href", at(link.getAttribute("href")));
  }
  const logout = document.getElementById("logout");
  logout.textContent = t("nav.logout");
  logout.addEventListener("click", async () => {
    stream?.close();
    await api.logout();
    navigate(at("/"));
  });
  document.addEventListener("click", (event) => {
    const link = event.target.closest("a[data-link]");
    if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    navigate(link.getAttribute("href"));
  });
  window.addEventListener("popstate", () => render());
  api.onSignedOut(() => {
    stream?.close();
    stream = null;
    document.getElementById("nav").hidden = true;
    notify(t("err.session"));
    show(loginView());
  });
}

async function start() {
  setupShell();
  try {
    await api.refresh(); // a reload keeps the login: the access token was only in memory, the cookie was not
  } catch (error) {
    if (error.status !== 401) notify(error.message);
  }
  await render();
}

start();
