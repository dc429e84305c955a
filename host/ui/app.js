// The plugin page: talks to the admin API of the host that serves it,
// with the token from logging in (kept for this browser tab only).
"use strict";

const API = "/admin/v1";
const $ = (selector) => document.querySelector(selector);
let token = sessionStorage.getItem("plughost.token");

function show(element, text) {
  element.textContent = text;
  element.hidden = !text;
}

function error(text) {
  show($("#error"), text);
  if (text) show($("#message"), "");
}

function message(text) {
  show($("#message"), text);
  if (text) show($("#error"), "");
}

/// Calls the API; resolves with the envelope's `data`, rejects with its `msg`.
async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return envelope(response.status, await response.text());
}

function envelope(status, text) {
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    throw new Error(`HTTP ${status}: ${text.slice(0, 200)}`);
  }
  if (status === 401 && token) {
    loggedOut(json.msg);
  }
  if (status < 200 || status >= 300) {
    throw new Error(json.msg || `HTTP ${status}`);
  }
  return json;
}

function loggedOut(reason) {
  token = null;
  sessionStorage.removeItem("plughost.token");
  $("#app").hidden = true;
  $("#logout").hidden = true;
  $("#login").hidden = false;
  if (reason) error(`${reason}. Log in again.`);
  $("#username").focus();
}

async function login(event) {
  event.preventDefault();
  try {
    const reply = await api("POST", `${API}/auth/login`, {
      username: $("#username").value,
      password: $("#password").value,
    });
    token = reply.data.access_token;
    sessionStorage.setItem("plughost.token", token);
    $("#password").value = "";
    error("");
    await enter();
  } catch (e) {
    error(e.message);
  }
}

async function logout() {
  try {
    await api("POST", `${API}/auth/logout`);
  } catch {
    // The token goes either way.
  }
  loggedOut("");
  message("Logged out.");
}

async function enter() {
  $("#login").hidden = true;
  $("#app").hidden = false;
  $("#logout").hidden = false;
  await Promise.all([refresh(), refreshUsers(), refreshCatalog()]);
}

/// Each plugin's routes, from the API document.
async function routesByPlugin() {
  const routes = {};
  try {
    const response = await fetch("/openapi.json");
    const doc = await response.json();
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const [method, op] of Object.entries(item)) {
        const plugin = op["x-plugin"];
        if (!plugin) continue;
        (routes[plugin] = routes[plugin] || []).push({
          method: method.toUpperCase(),
          path,
          summary: op.summary || "",
          secured: Array.isArray(op.security),
        });
      }
    }
  } catch {
    // The list still shows without the routes.
  }
  return routes;
}

async function refresh() {
  try {
    const [list, changed, routes] = await Promise.all([
      api("GET", `${API}/sys/plugins`),
      api("GET", `${API}/sys/plugins/changed`),
      routesByPlugin(),
    ]);
    $("#changed").hidden = changed.data !== true;
    render(list.data, routes);
  } catch (e) {
    error(e.message);
  }
}

function cell(row, label, content) {
  const td = document.createElement("td");
  td.dataset.label = label;
  if (typeof content === "string") td.textContent = content;
  else if (content) td.append(content);
  row.append(td);
  return td;
}

function button(text, className, onClick, label) {
  const b = document.createElement("button");
  b.type = "button";
  b.textContent = text;
  b.className = className;
  if (label) b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

/// A name in bold, with a tag after it when `tag` is given.
function titled(name, tag) {
  const title = document.createElement("div");
  const strong = document.createElement("strong");
  strong.textContent = name;
  title.append(strong);
  if (tag) {
    const span = document.createElement("span");
    span.className = "tag";
    span.textContent = tag;
    title.append(span);
  }
  return title;
}

function render(plugins, routes) {
  const body = $("#plugins tbody");
  body.replaceChildren();
  for (const item of plugins) {
    const meta = item.plugin || {};
    const name = meta.name;
    const row = document.createElement("tr");
    row.dataset.plugin = name;

    const title = titled(name, item.local ? "local" : "");
    if (meta.summary) {
      const summary = document.createElement("div");
      summary.textContent = meta.summary;
      title.append(summary);
    }
    const list = routes[name] || [];
    if (list.length) {
      const details = document.createElement("details");
      const label = document.createElement("summary");
      label.textContent = `${list.length} route${list.length === 1 ? "" : "s"}`;
      const ul = document.createElement("ul");
      ul.className = "routes";
      for (const r of list) {
        const li = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = `${r.method} ${r.path}`;
        li.append(code, ` ${r.summary}${r.secured ? " (token)" : ""}`);
        ul.append(li);
      }
      details.append(label, ul);
      title.append(details);
    }
    const jobs = item.jobs || [];
    if (jobs.length) {
      const details = document.createElement("details");
      details.className = "jobs";
      const label = document.createElement("summary");
      label.textContent = `${jobs.length} job${jobs.length === 1 ? "" : "s"}`;
      const ul = document.createElement("ul");
      ul.className = "routes";
      for (const j of jobs) {
        const li = document.createElement("li");
        const code = document.createElement("code");
        code.textContent = j.name;
        const last = j.last_run ? `last run ${j.last_run}${j.outcome ? " (" + j.outcome + (j.error ? ": " + j.error : "") + ")" : " (running)"}` : "not run yet";
        li.append(code, ` ${j.schedule}, ${j.cluster === "once" ? "once per tick in the cluster" : "on each instance"}; ${last}; next run ${j.next_run || "none"}`);
        ul.append(li);
      }
      details.append(label, ul);
      title.append(details);
    }
    const uses = [];
    if ((item.http_allow || []).length) uses.push(`may reach ${item.http_allow.join(", ")}`);
    if ((item.identity || []).length) uses.push(`uses identity: ${item.identity.join(", ")}`);
    const hooks = item.access_hooks || [];
    if (hooks.includes("authenticate")) uses.push("authenticates admin requests");
    if (hooks.includes("authorize")) uses.push("decides admin access (policy)");
    for (const text of uses) {
      const line = document.createElement("div");
      line.className = "reach";
      line.textContent = text;
      title.append(line);
    }
    cell(row, "Plugin", title);
    const version = document.createElement("div");
    version.textContent = meta.version || "";
    if (item.state !== "error" && item.state !== "absent") {
      const signer = document.createElement("div");
      signer.className = "signer";
      signer.textContent = item.signer ? `signed by ${item.signer}` : "unsigned";
      version.append(signer);
    }
    cell(row, "Version", version);
    const kind = item.app && item.app.extend ? `extend (${item.app.extend})` : item.app ? "app" : "capability";
    cell(row, "Kind", item.state === "absent" ? "" : kind);

    const state = document.createElement("div");
    const badge = document.createElement("span");
    badge.className = `state state-${item.state}`;
    badge.textContent = item.state;
    state.append(badge);
    if (item.error) {
      const reason = document.createElement("div");
      reason.className = "reason";
      reason.textContent = item.error;
      state.append(reason);
    }
    cell(row, "State", state);

    const instances = document.createElement("ul");
    instances.className = "instances";
    for (const i of item.instances || []) {
      const li = document.createElement("li");
      li.textContent = `${i.id}: ${i.state}${i.version ? " " + i.version : ""}${i.error ? " (" + i.error + ")" : ""}`;
      instances.append(li);
    }
    cell(row, "Instances", instances);

    const actions = document.createElement("div");
    actions.className = "actions";
    const loaded = item.state === "loaded" || item.state === "disabled";
    if (loaded) {
      const enabled = meta.enable === "1";
      actions.append(button(enabled ? "Disable" : "Enable", "toggle secondary", () => toggle(name),
        `${enabled ? "Disable" : "Enable"} ${name}`));
      actions.append(button("Download", "download secondary", () => download(name), `Download ${name}`));
    }
    actions.append(button("Uninstall", "uninstall danger", () => uninstall(name), `Uninstall ${name}`));
    cell(row, "Actions", actions);
    body.append(row);
  }
}

async function toggle(name) {
  try {
    const reply = await api("PUT", `${API}/sys/plugins/${encodeURIComponent(name)}/status`);
    message(`Plugin '${name}' is now ${reply.data.enable === "1" ? "enabled" : "disabled"}.`);
    await refresh();
  } catch (e) {
    error(e.message);
  }
}

async function download(name) {
  try {
    const response = await fetch(`${API}/sys/plugins/${encodeURIComponent(name)}`, {
      headers: { Authorization: `Bearer ${token}` },
    });
    if (!response.ok) {
      envelope(response.status, await response.text());
      return;
    }
    const url = URL.createObjectURL(await response.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `${name}.zip`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    error(e.message);
  }
}

/// What the configured catalogs offer (kept for the search box).
let catalog = [];

async function refreshCatalog() {
  const note = $("#catalog-note");
  try {
    const listing = (await api("GET", `${API}/sys/plugin-catalog`)).data;
    catalog = listing.plugins;
    const broken = listing.catalogs.filter((c) => c.error).map((c) => c.error);
    const signed = listing.catalogs.filter((c) => !c.error)
      .map((c) => `${c.location} (${c.signer ? "index signed by " + c.signer : "index unsigned"})`);
    show(note, [signed.length ? `From ${signed.join(", ")}.` : "", ...broken].filter(Boolean).join("\n"));
  } catch (e) {
    catalog = [];
    show(note, e.message);
  }
  renderCatalog();
}

/// Whether catalog entry `item` matches the search text (name or tag).
function matches(item, text) {
  const term = text.trim().toLowerCase();
  if (!term) return true;
  const tags = (item.plugin && item.plugin.tags) || [];
  return item.name.toLowerCase().includes(term) || tags.some((t) => t.toLowerCase().includes(term));
}

function renderCatalog() {
  const body = $("#catalog tbody");
  body.replaceChildren();
  const text = $("#catalog-search").value;
  for (const item of catalog.filter((i) => matches(i, text))) {
    const about = item.plugin || {};
    const row = document.createElement("tr");
    row.dataset.entry = item.name;
    const title = titled(item.name, "");
    for (const tag of about.tags || []) {
      const span = document.createElement("span");
      span.className = "tag";
      span.textContent = tag;
      title.firstChild.append(span);
    }
    if (about.summary) {
      const summary = document.createElement("div");
      summary.textContent = about.summary;
      title.append(summary);
    }
    cell(row, "Plugin", title);
    const version = document.createElement("div");
    version.textContent = about.version;
    const by = document.createElement("div");
    by.className = "reach";
    by.textContent = [about.author ? `by ${about.author}` : "", item.contract ? `plugin-api ${item.contract}` : ""]
      .filter(Boolean).join(", ");
    version.append(by);
    cell(row, "Version", version);
    const signer = document.createElement("span");
    signer.className = "signer";
    signer.textContent = item.signer ? `signed by ${item.signer}` : "unsigned";
    cell(row, "Signer", signer);
    const here = document.createElement("span");
    here.className = "catalog-state";
    here.textContent = !item.compatible ? "incompatible"
      : item.upgrade ? `${item.installed} installed, ${item.upgrade} offered`
      : item.installed ? `${item.installed} installed` : "not installed";
    cell(row, "Here", here);
    const actions = document.createElement("div");
    actions.className = "actions";
    if (item.compatible && !item.installed) {
      actions.append(button("Install", "install", () => installFromCatalog(item.name), `Install ${item.name}`));
    }
    if (item.compatible && item.upgrade) {
      actions.append(button(`Upgrade to ${item.upgrade}`, "upgrade", () => installFromCatalog(item.name),
        `Upgrade ${item.name} to ${item.upgrade}`));
    }
    cell(row, "Actions", actions);
    body.append(row);
  }
}

async function installFromCatalog(name) {
  try {
    const reply = await api("POST", `${API}/sys/plugins?${new URLSearchParams({ type: "catalog", name })}`);
    message(reply.msg);
    await Promise.all([refresh(), refreshCatalog()]);
  } catch (e) {
    error(e.message);
  }
}

function confirmed(text, action) {
  const dialog = $("#confirm");
  $("#confirm-text").textContent = text;
  $("#confirm-yes").textContent = action;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
  });
}

async function uninstall(name) {
  if (!(await confirmed(`Uninstall '${name}' from every instance? A backup is kept.`, "Uninstall"))) return;
  try {
    const reply = await api("DELETE", `${API}/sys/plugins/${encodeURIComponent(name)}`);
    message(reply.msg);
    await refresh();
  } catch (e) {
    error(e.message);
  }
}

/// A comma-separated list as an array of its trimmed, non-empty items.
function items(text) {
  return text.split(",").map((x) => x.trim()).filter((x) => x);
}

/// An input holding a list, with a button that saves it.
function listEditor(values, label, save) {
  const form = document.createElement("form");
  form.className = "inline";
  const input = document.createElement("input");
  input.value = values.join(", ");
  input.setAttribute("aria-label", label);
  const submit = document.createElement("button");
  submit.type = "submit";
  submit.className = "secondary";
  submit.textContent = "Save";
  submit.setAttribute("aria-label", `Save ${label.toLowerCase()}`);
  form.append(input, submit);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    save(items(input.value));
  });
  return form;
}

/// The users and roles views; each says so when the caller may not read it.
async function refreshUsers() {
  const [users, roles, known] = await Promise.allSettled([
    api("GET", `${API}/sys/users?page=1&size=200`),
    api("GET", `${API}/sys/roles`),
    api("GET", `${API}/sys/permissions`),
  ]);
  $("#known-permissions").hidden = known.status === "rejected";
  if (known.status === "fulfilled") renderKnown(known.value.data);
  show($("#users-note"), users.status === "rejected" ? users.reason.message : "");
  $("#users").hidden = users.status === "rejected";
  if (users.status === "fulfilled") renderUsers(users.value.data);
  show($("#roles-note"), roles.status === "rejected" ? roles.reason.message : "");
  $("#roles").hidden = roles.status === "rejected";
  if (roles.status === "fulfilled") renderRoles(roles.value.data);
}

function renderUsers(page) {
  const body = $("#users tbody");
  body.replaceChildren();
  for (const u of page.items) {
    const row = document.createElement("tr");
    row.dataset.user = u.username;
    const who = titled(u.username, u.superuser ? "superuser" : "");
    for (const extra of [u.nickname, u.email]) {
      if (!extra) continue;
      const line = document.createElement("div");
      line.className = "reach";
      line.textContent = extra;
      who.append(line);
    }
    cell(row, "User", who);
    cell(row, "Roles", listEditor(u.roles, `Roles of ${u.username}`, (roles) => userRoles(u, roles)));
    const badge = document.createElement("span");
    badge.className = `state ${u.status === 1 ? "state-loaded" : "state-disabled"}`;
    badge.textContent = u.status === 1 ? "active" : "disabled";
    cell(row, "State", badge);
    const actions = document.createElement("div");
    actions.className = "actions";
    const active = u.status === 1;
    actions.append(button(active ? "Disable" : "Enable", "user-toggle secondary", () => userStatus(u, !active),
      `${active ? "Disable" : "Enable"} ${u.username}`));
    actions.append(button("Delete", "user-delete danger", () => deleteUser(u), `Delete ${u.username}`));
    cell(row, "Actions", actions);
    body.append(row);
  }
}

/// The permissions there are to grant: the host's, then each plugin's.
function renderKnown(known) {
  const list = $("#known-permissions ul");
  list.replaceChildren();
  const owners = [["host", known.core], ...Object.entries(known.plugins)];
  for (const [owner, strings] of owners) {
    if (!strings.length) continue;
    const li = document.createElement("li");
    li.dataset.owner = owner;
    const code = document.createElement("code");
    code.textContent = strings.join(", ");
    li.append(`${owner}: `, code);
    list.append(li);
  }
}

function renderRoles(roles) {
  const body = $("#roles tbody");
  body.replaceChildren();
  for (const r of roles) {
    const row = document.createElement("tr");
    row.dataset.role = r.name;
    const name = document.createElement("strong");
    name.textContent = r.name;
    cell(row, "Role", name);
    cell(row, "Permissions", listEditor(r.permissions, `Permissions of ${r.name}`, (p) => rolePermissions(r, p)));
    cell(row, "Users", String(r.users));
    const actions = document.createElement("div");
    actions.className = "actions";
    actions.append(button("Delete", "role-delete danger", () => deleteRole(r), `Delete role ${r.name}`));
    cell(row, "Actions", actions);
    body.append(row);
  }
}

/// Runs a change to users or roles, shows the result, then says what it
/// did (the views are current by the time the message is).
async function change(work, done) {
  let failed = null;
  try {
    await work();
  } catch (e) {
    failed = e;
  }
  await refreshUsers();
  if (failed) error(failed.message);
  else message(done);
}

function userRoles(u, roles) {
  return change(() => api("PUT", `${API}/sys/users/${u.id}/roles`, { roles }),
    `User '${u.username}' holds ${roles.length ? roles.join(", ") : "no role"}.`);
}

function userStatus(u, active) {
  return change(() => api("PUT", `${API}/sys/users/${u.id}/status`, { status: active ? 1 : 0 }),
    `User '${u.username}' is ${active ? "enabled" : "disabled; its tokens are refused"}.`);
}

async function deleteUser(u) {
  if (!(await confirmed(`Delete user '${u.username}'? Its tokens stop working on every instance.`, "Delete"))) return;
  await change(() => api("DELETE", `${API}/sys/users/${u.id}`), `User '${u.username}' deleted.`);
}

function rolePermissions(r, permissions) {
  return change(() => api("PUT", `${API}/sys/roles/${encodeURIComponent(r.name)}/permissions`, { permissions }),
    `Role '${r.name}' holds ${permissions.length ? permissions.join(", ") : "no permission"}.`);
}

async function deleteRole(r) {
  if (!(await confirmed(`Delete role '${r.name}'? Its ${r.users} user(s) lose its permissions.`, "Delete"))) return;
  await change(() => api("DELETE", `${API}/sys/roles/${encodeURIComponent(r.name)}`), `Role '${r.name}' deleted.`);
}

async function addUser(event) {
  event.preventDefault();
  const username = $("#new-username").value;
  await change(async () => {
    await api("POST", `${API}/sys/users`, {
      username,
      password: $("#new-password").value,
      roles: items($("#new-roles").value),
    });
    $("#user-form").reset();
  }, `User '${username}' added.`);
}

async function addRole(event) {
  event.preventDefault();
  const name = $("#new-role").value;
  await change(async () => {
    await api("POST", `${API}/sys/roles`, { name });
    $("#role-form").reset();
  }, `Role '${name}' added.`);
}

function query(upgrade, force, extra) {
  const params = new URLSearchParams(extra);
  if (upgrade) params.set("upgrade", "true");
  if (force) params.set("force", "true");
  return params.toString();
}

function upload(event) {
  event.preventDefault();
  const file = $("#upload-file").files[0];
  if (!file) return;
  const form = new FormData();
  form.append("file", file);
  const progress = $("#upload-progress");
  const submit = event.target.querySelector("button[type=submit]");
  progress.value = 0;
  progress.hidden = false;
  submit.disabled = true;
  const xhr = new XMLHttpRequest();
  xhr.open("POST", `${API}/sys/plugins?${query($("#upload-upgrade").checked, $("#upload-force").checked, { type: "zip" })}`);
  xhr.setRequestHeader("Authorization", `Bearer ${token}`);
  xhr.upload.addEventListener("progress", (e) => {
    if (e.lengthComputable) progress.value = Math.round((e.loaded / e.total) * 100);
  });
  xhr.addEventListener("load", async () => {
    submit.disabled = false;
    progress.value = 100;
    try {
      message(envelope(xhr.status, xhr.responseText).msg);
      event.target.reset();
      await refresh();
    } catch (e) {
      error(e.message);
    }
    progress.hidden = true;
  });
  xhr.addEventListener("error", () => {
    submit.disabled = false;
    progress.hidden = true;
    error("The upload failed: the host did not answer.");
  });
  xhr.send(form);
}

async function installGit(event) {
  event.preventDefault();
  const submit = event.target.querySelector("button[type=submit]");
  const output = $("#git-build");
  const progress = $("#git-progress");
  submit.disabled = true;
  progress.hidden = false;
  output.hidden = false;
  output.textContent = "Cloning…";
  const started = Date.now();
  // Shows cargo's output if the build on the host started after this
  // install did (an older build's output is not this one's).
  const showBuild = async () => {
    try {
      const build = (await api("GET", `${API}/sys/plugin-build`)).data;
      const ours = build.crate_dir && build.elapsed_ms <= Date.now() - started + 1000;
      if (ours && (build.running || build.lines.length)) {
        output.textContent = build.lines.join("\n") || "Building…";
        output.scrollTop = output.scrollHeight;
      } else {
        output.textContent = `Cloning and checking… ${Math.round((Date.now() - started) / 1000)} s`;
      }
    } catch {
      // The install's own answer reports what went wrong.
    }
  };
  const poll = setInterval(showBuild, 500);
  try {
    const source = { type: "git", repo_url: $("#git-url").value };
    if ($("#git-ref").value) source.ref = $("#git-ref").value;
    const reply = await api("POST", `${API}/sys/plugins?${query($("#git-upgrade").checked, false, source)}`);
    message(reply.msg);
    await refresh();
  } catch (e) {
    error(e.message);
  } finally {
    clearInterval(poll);
    await showBuild();
    submit.disabled = false;
    progress.hidden = true;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#login-form").addEventListener("submit", login);
  $("#logout").addEventListener("click", logout);
  $("#refresh").addEventListener("click", refresh);
  $("#catalog-refresh").addEventListener("click", refreshCatalog);
  $("#catalog-search").addEventListener("input", renderCatalog);
  $("#upload-form").addEventListener("submit", upload);
  $("#git-form").addEventListener("submit", installGit);
  $("#users-refresh").addEventListener("click", refreshUsers);
  $("#user-form").addEventListener("submit", addUser);
  $("#role-form").addEventListener("submit", addRole);
  if (token) enter();
  else $("#username").focus();
});
