// The sandbox portal's Contact Center page: installs, opens and uninstalls the app like a portal does,
// and plays the parent side of the BX24 library for the app's frame (see bx24-standin.js).
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("sandbox-config").textContent);
  const byId = (id) => document.getElementById(id);
  const frame = byId("app-frame");
  const userSelect = byId("user");
  const langSelect = byId("lang");
  const MIN_HEIGHT = 120;
  const MAX_HEIGHT = 6000;
  let current = null; // what the frame shows: {kind: "install" | "widget", bx24: {...}, loaded: bool}
  let state = null;
  let loads = 0;

  // --- switches (remembered per portal in this browser) ---------------------------------------
  for (const user of config.users) {
    userSelect.add(new Option(`${user.name} (${user.admin ? "administrator" : "user"})`, user.id));
  }
  for (const lang of config.languages) langSelect.add(new Option(lang, lang));
  const remembered = JSON.parse(localStorage.getItem("b24-sandbox:" + config.memberId) || "{}");
  if (remembered.user && config.users.some((u) => u.id === remembered.user)) userSelect.value = remembered.user;
  if (remembered.lang && config.languages.includes(remembered.lang)) langSelect.value = remembered.lang;
  function remember() {
    localStorage.setItem("b24-sandbox:" + config.memberId,
      JSON.stringify({ user: userSelect.value, lang: langSelect.value }));
  }
  userSelect.addEventListener("change", remember);
  langSelect.addEventListener("change", () => { remember(); refresh(); });

  // --- talking to the sandbox ------------------------------------------------------------------
  async function api(action, body) {
    const response = await fetch("/sandbox/api/" + action, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body || {}),
    });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error_description || data.error || response.status);
    return data;
  }

  async function refresh() {
    const response = await fetch("/sandbox/api/state?lang=" + encodeURIComponent(langSelect.value));
    state = await response.json();
    render();
  }

  // --- the page --------------------------------------------------------------------------------
  const STATE_TEXT = {
    "not-installed": "app not installed",
    "installing": "installing: waiting for BX24.installFinish()",
    "installed": "app installed",
    "uninstalled": "app uninstalled",
  };

  function square(className, title, iconText, color) {
    const element = document.createElement("div");
    element.className = "square " + className;
    const icon = document.createElement("div");
    icon.className = "icon";
    icon.textContent = iconText;
    if (color) icon.style.background = color;
    const label = document.createElement("div");
    label.textContent = title;
    element.append(icon, label);
    return element;
  }

  function render() {
    const appState = byId("app-state");
    appState.dataset.state = state.appState;
    appState.textContent = STATE_TEXT[state.appState] || state.appState;
    const installed = state.appState === "installed" || state.appState === "installing";
    byId("install").textContent = installed ? "Reinstall the app" : "Install the app";
    byId("uninstall").disabled = !installed;
    byId("stale-row").hidden = state.appState !== "uninstalled";
    const finish = byId("install-finish");
    finish.dataset.called = state.installFinished ? "yes" : "no";
    finish.textContent = state.installFinished ? "called" : "not called";
    byId("bound-placements").textContent = state.boundPlacements.join(", ") || "none";
    byId("bound-events").textContent = state.boundEvents.join(", ") || "none";

    const grid = byId("squares");
    grid.replaceChildren();
    for (const builtIn of config.builtIn) {
      const element = square("builtin", builtIn.title, builtIn.title.charAt(0), builtIn.color);
      element.dataset.code = builtIn.code;
      element.title = "Not simulated: the sandbox stands in for this app only";
      grid.append(element);
    }
    for (const app of state.squares) {
      const element = square("app", app.title, app.title.charAt(0).toUpperCase());
      element.id = "square-app";
      element.dataset.placementId = app.id;
      element.title = app.description;
      element.tabIndex = 0;
      element.setAttribute("role", "button");
      const ribbon = document.createElement("span");
      ribbon.className = "ribbon";
      ribbon.textContent = "app";
      element.append(ribbon);
      element.addEventListener("click", () => openWidget(false, app.title));
      element.addEventListener("keydown", (event) => { if (event.key === "Enter") openWidget(false, app.title); });
      grid.append(element);
    }

    const events = byId("event-log");
    events.replaceChildren();
    for (const delivery of state.deliveries) {
      const item = document.createElement("li");
      item.dataset.event = delivery.event;
      item.dataset.status = delivery.status === null ? "error" : String(delivery.status);
      const time = new Date(delivery.at * 1000).toLocaleTimeString();
      const answer = delivery.error || `HTTP ${delivery.status} ${delivery.body.slice(0, 160)}`;
      item.textContent = `${time} ${delivery.event} -> ${delivery.handler}: ${answer}`;
      if (delivery.error || delivery.status >= 300) item.className = "bad";
      events.append(item);
    }
  }

  function log(command, text, bad) {
    const item = document.createElement("li");
    item.dataset.command = command;
    item.textContent = `${new Date().toLocaleTimeString()} ${text}`;
    if (bad) item.className = "bad";
    const list = byId("bx24-log");
    list.append(item);
    list.scrollTop = list.scrollHeight;
  }

  function note(text) {
    log("sandbox", text, true);
  }

  // --- the slider and the frame ----------------------------------------------------------------
  function openSlider(title) {
    byId("slider-title").textContent = title;
    byId("frame-info").textContent = "";
    frame.style.height = "";
    frame.style.width = "";
    byId("slider").hidden = false;
  }

  function closeSlider() {
    byId("slider").hidden = true;
    current = null;
    frame.removeAttribute("src");
    frame.src = "about:blank";
  }

  byId("slider-close").addEventListener("click", closeSlider);
  byId("slider-shade").addEventListener("click", closeSlider);
  document.addEventListener("keydown", (event) => { if (event.key === "Escape" && !byId("slider").hidden) closeSlider(); });

  // A portal opens an app with a form POST into the frame: DOMAIN, PROTOCOL, LANG and APP_SID in the
  // URL's query (already in `action`), the rest in the body.
  function postIntoFrame(action, fields) {
    const form = document.createElement("form");
    form.method = "post";
    form.action = action;
    form.target = frame.name;
    form.hidden = true;
    for (const [name, value] of Object.entries(fields)) {
      const input = document.createElement("input");
      input.type = "hidden";
      input.name = name;
      input.value = value;
      form.append(input);
    }
    document.body.append(form);
    form.submit();
    form.remove();
  }

  frame.addEventListener("load", async () => {
    if (!current || current.loaded) return;
    current.loaded = true;
    loads += 1;
    frame.dataset.loads = String(loads);
    frame.dataset.kind = current.kind;
    // No event is sent while installing: ONAPPINSTALL follows installFinish (installation-finish.md).
  });

  function setFrameSize(width, height) {
    const h = Math.max(MIN_HEIGHT, Math.min(MAX_HEIGHT, Math.round(Number(height) || 0)));
    frame.style.height = h + "px";
    const w = Number(width);
    frame.style.width = Number.isFinite(w) && w > 0 ? Math.min(w, frame.parentElement.clientWidth) + "px" : "";
    frame.dataset.height = String(h);
    byId("frame-info").textContent = `frame ${frame.style.width || "100%"} x ${h}px`;
  }

  // --- the parent side of BX24 -----------------------------------------------------------------
  function reply(message, result) {
    if (message.id && frame.contentWindow) {
      frame.contentWindow.postMessage({ bx24standin: 1, id: message.id, result: result }, config.appOrigin);
    }
  }

  window.addEventListener("message", async (event) => {
    // Only the app's own pages, in our frame, speak BX24 to this page.
    if (event.source !== frame.contentWindow || event.origin !== config.appOrigin) return;
    const message = event.data;
    if (!message || message.bx24standin !== 1 || typeof message.command !== "string") return;
    const params = message.params || {};
    switch (message.command) {
      case "init":
        log("init", "BX24.init()");
        reply(message, current ? current.bx24 : null);
        break;
      case "installFinish":
        log("installFinish", "BX24.installFinish()");
        if (current && current.kind === "install") {
          reply(message, true);
          try {
            // ONAPPINSTALL goes out now, then the frame reloads into the app (PLACEMENT=DEFAULT).
            const installer = current.bx24;
            const answer = await api("install-finished", { user_id: installer.userId, lang: installer.lang });
            if (!answer.deliveries.length) note("ONAPPINSTALL: the app bound no handler for it; nothing sent");
            current = { kind: "app", bx24: answer.reload.bx24, loaded: false };
            postIntoFrame(answer.reload.action, answer.reload.fields);
          } catch (error) {
            note("installFinish ignored: " + error.message);
          }
          await refresh();
          break;
        } else {
          note("installFinish outside the install frame: ignored");
        }
        reply(message, true);
        break;
      case "fitWindow":
        setFrameSize(null, params.height);
        log("fitWindow", `BX24.fitWindow() -> ${frame.dataset.height}px`);
        reply(message, true);
        break;
      case "resizeWindow":
        setFrameSize(params.width, params.height);
        log("resizeWindow", `BX24.resizeWindow(${params.width}, ${params.height})`);
        reply(message, true);
        break;
      case "callMethod": {
        log("callMethod", `BX24.callMethod("${params.method}")`);
        const auth = current && current.bx24 && current.bx24.auth ? current.bx24.auth.access_token : "";
        try {
          const answer = await fetch(`/rest/${encodeURIComponent(params.method || "")}.json`, {
            method: "POST", headers: { "Content-Type": "application/json" },
            body: JSON.stringify(Object.assign({}, params.params || {}, { auth: auth })),
          });
          reply(message, { status: answer.status, answer: await answer.json() });
        } catch (error) {
          reply(message, { status: 0, answer: { error: "NETWORK", error_description: String(error) } });
        }
        break;
      }
      case "refreshAuth":
        log("refreshAuth", "BX24.refreshAuth()");
        reply(message, current && current.bx24 ? current.bx24.auth : null);
        break;
      case "closeApplication":
        log("closeApplication", "BX24.closeApplication()");
        closeSlider();
        break;
      default:
        note(`BX24.${message.command}(): not simulated by the sandbox`);
        reply(message, null);
    }
  });

  // --- actions ---------------------------------------------------------------------------------
  function who() {
    return { user_id: userSelect.value, lang: langSelect.value };
  }

  async function open(kind, action, body, title) {
    let data;
    try {
      data = await api(action, body);
    } catch (error) {
      note(`${action}: ${error.message}`);
      await refresh();
      return;
    }
    openSlider(title);
    current = { kind: kind, bx24: data.bx24, loaded: false };
    postIntoFrame(data.action, data.fields);
  }

  async function openWidget(stale, title) {
    await open("widget", "open", Object.assign(who(), { stale: stale }), title || "b24widget");
  }

  byId("install").addEventListener("click", async () => {
    await open("install", "install", who(), "Installing the app");
    await refresh();
  });

  byId("uninstall").addEventListener("click", async () => {
    closeSlider();
    try {
      const answer = await api("uninstall", { clean: byId("clean").checked });
      if (!answer.deliveries.length) note("ONAPPUNINSTALL: the app bound no handler for it; nothing sent");
    } catch (error) {
      note("uninstall: " + error.message);
    }
    await refresh();
  });

  byId("open-stale").addEventListener("click", () => openWidget(true, "b24widget (after uninstall)"));

  refresh();
})();
