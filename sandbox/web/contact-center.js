// The sandbox portal's Contact Center page: installs, opens and uninstalls the app like a portal does,
// and is the parent side of Bitrix24's frame protocol, so the official frame library
// (@bitrix24/b24jssdk B24Frame) runs unchanged in the app's frame: the frame's window.name is
// "DOMAIN|PROTOCOL|APP_SID", the library posts "command:paramsJSON:callbackKey:appSid" strings to this
// page's origin and gets "callbackKey:JSON" back.
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("sandbox-config").textContent);
  const byId = (id) => document.getElementById(id);
  let frame = byId("app-frame"); // replaced by a fresh iframe for every app open (see postIntoFrame)
  const userSelect = byId("user");
  const langSelect = byId("lang");
  const MIN_HEIGHT = 120;
  const MAX_HEIGHT = 6000;
  let current = null; // what the frame shows: {kind: "install" | "app" | "widget", frame: {...}, loaded: bool}
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
    "installing": "installing: waiting for installFinish",
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

  // The icon the app registered with imconnector.register (ICON's DATA_IMAGE at SIZE; the first letter only when
  // it gave none). imconnector-register.md does not say how COLOR combines with the image (its example image is
  // itself coloured), so the sandbox draws the image on white inside a ring of COLOR: both kinds stay visible.
  function connectorIcon(icon, registered) {
    if (!registered.image) return;
    icon.textContent = "";
    icon.classList.add("registered");
    icon.style.background = "#fff";
    icon.style.boxShadow = `inset 0 0 0 3px ${registered.color || "#c6cdd3"}`;
    const image = document.createElement("img");
    image.src = registered.image;  // a data:image/ URI (the sandbox passes no other)
    image.alt = "";
    if (registered.size) image.style.width = image.style.height = `calc(${registered.size} * 0.75)`;  // inside the ring
    icon.append(image);
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

    // The connector's tile per Open Line (imconnector.register): a click opens SETTING_CONNECTOR.
    for (const tile of state.connectorTiles || []) {
      const element = square("connector", `${tile.name}: ${tile.lineName}`, tile.name.charAt(0).toUpperCase());
      connectorIcon(element.querySelector(".icon"), tile.icon || {});
      element.id = `connector-${tile.connector}-${tile.line}`;
      element.dataset.active = tile.active ? "yes" : "no";
      element.tabIndex = 0;
      element.setAttribute("role", "button");
      const ribbon = document.createElement("span");
      ribbon.className = "ribbon";
      ribbon.textContent = tile.active ? "connected" : "connector";
      element.append(ribbon);
      const go = () => open("connector", "open-connector",
        Object.assign(who(), { connector: tile.connector, line: tile.line }), `${tile.name}: ${tile.lineName}`);
      element.addEventListener("click", go);
      element.addEventListener("keydown", (event) => { if (event.key === "Enter") go(); });
      grid.append(element);
    }

    // Every other placement the app bound, read from the portal's bindings: a new one needs no change here.
    const rows = byId("placements");
    const typed = {};
    for (const input of rows.querySelectorAll("input")) typed[input.dataset.placementId] = input.value;
    rows.replaceChildren();
    byId("placements-panel").hidden = !(state.placements || []).length;
    for (const placement of state.placements || []) {
      const row = document.createElement("tr");
      row.dataset.placement = placement.placement;
      const code = document.createElement("td");
      code.append(Object.assign(document.createElement("code"), { textContent: placement.placement }));
      const title = document.createElement("td");
      title.textContent = placement.title;
      title.title = placement.description;
      const handler = document.createElement("td");
      handler.className = "handler";
      handler.textContent = placement.handler;
      const options = document.createElement("td");
      const input = document.createElement("input");
      input.type = "text";
      input.value = typed[placement.id] !== undefined ? typed[placement.id] : "{}";
      input.dataset.placementId = placement.id;
      input.setAttribute("aria-label", `PLACEMENT_OPTIONS for ${placement.placement}`);
      options.append(input);
      const go = document.createElement("td");
      const button = document.createElement("button");
      button.type = "button";
      button.id = `open-placement-${placement.id}`;
      button.textContent = "Open";
      button.addEventListener("click", () => {
        let parsed;
        try {
          parsed = JSON.parse(input.value || "{}");
        } catch (error) {
          note(`PLACEMENT_OPTIONS for ${placement.placement}: not JSON`);
          return;
        }
        open("widget", "open", Object.assign(who(), { placement_id: placement.id, options: parsed }),
          `${placement.title} (${placement.placement})`);
      });
      go.append(button);
      row.append(code, title, handler, options, go);
      rows.append(row);
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
  function postIntoFrame(data) {
    // A portal opens each app in a new iframe named DOMAIN|PROTOCOL|APP_SID: the frame library reads it
    // from window.name. A browsing context takes its name when created, so the iframe is replaced.
    const fresh = document.createElement("iframe");
    for (const name of ["id", "title", "style"]) {
      if (frame.hasAttribute(name)) fresh.setAttribute(name, frame.getAttribute(name));
    }
    fresh.dataset.loads = frame.dataset.loads || "0";
    fresh.name = data.frameName;
    fresh.addEventListener("load", onFrameLoad);
    const old = frame;
    frame = fresh;
    old.replaceWith(fresh);
    const action = data.action;
    const fields = data.fields;
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

  frame.addEventListener("load", onFrameLoad);
  function onFrameLoad() {
    if (!current || current.loaded) return;
    try {
      if (frame.contentWindow.location.href === "about:blank") return;  // the new iframe's first, empty page
    } catch (error) { /* another origin: the app's page has loaded */ }
    current.loaded = true;
    loads += 1;
    frame.dataset.loads = String(loads);
    frame.dataset.kind = current.kind;
    // No event is sent while installing: ONAPPINSTALL follows installFinish (installation-finish.md).
  }

  function setFrameSize(width, height) {
    const h = Math.max(MIN_HEIGHT, Math.min(MAX_HEIGHT, Math.round(Number(height) || 0)));
    frame.style.height = h + "px";
    const w = Number(width);
    frame.style.width = Number.isFinite(w) && w > 0 ? Math.min(w, frame.parentElement.clientWidth) + "px" : "";
    frame.dataset.height = String(h);
    byId("frame-info").textContent = `frame ${frame.style.width || "100%"} x ${h}px`;
  }

  // --- the parent side of the frame protocol ------------------------------------------------
  function reply(key, result) {
    if (key && frame.contentWindow) {
      frame.contentWindow.postMessage(key + ":" + JSON.stringify(result === undefined ? {} : result), config.appOrigin);
    }
  }

  // "command:paramsJSON:callbackKey:appSid", or "command:callbackKey:appSid" when there are no params
  // (the params themselves may contain ":").
  function parseCommand(text) {
    const parts = text.split(":");
    if (parts.length < 3) return null;
    const appSid = parts.pop();
    const key = parts.pop();
    const command = parts.shift();
    let params = {};
    if (parts.length) {
      try { params = JSON.parse(parts.join(":")); } catch (error) { params = parts.join(":"); }
    }
    return { command, params, key, appSid };
  }

  window.addEventListener("message", async (event) => {
    // Only the app's own pages, in our frame, speak the frame protocol to this page.
    if (event.source !== frame.contentWindow || event.origin !== config.appOrigin) return;
    if (typeof event.data !== "string" || !current) return;
    const message = parseCommand(event.data);
    // The APP_SID of the frame this page opened (the third part of its window.name).
    if (!message || message.appSid !== current.frame.frameName.split("|")[2]) return;
    const params = message.params && typeof message.params === "object" ? message.params : {};
    switch (message.command) {
      case "getInitData":
        log("getInitData", "getInitData");
        reply(message.key, current.frame.init);
        break;
      case "setInstall":
        reply(message.key, {});
        break;
      case "setInstallFinish":
        log("installFinish", "installFinish()");
        reply(message.key, {});
        if (current.kind === "install") {
          try {
            // ONAPPINSTALL goes out now, then the frame reloads into the app (PLACEMENT=DEFAULT).
            const installer = current.frame;
            const answer = await api("install-finished", { user_id: installer.user, lang: installer.lang });
            if (!answer.deliveries.length) note("ONAPPINSTALL: the app bound no handler for it; nothing sent");
            byId("slider-title").textContent = answer.title;
            openFrame("app", answer.reload);
          } catch (error) {
            note("installFinish ignored: " + error.message);
          }
          await refresh();
        } else {
          note("installFinish outside the install frame: ignored");
        }
        break;
      case "resizeWindow": {
        setFrameSize(params.width === "100%" ? null : params.width, params.height);
        // fitWindow() is resizeWindow with width "100%" and the page's scroll height.
        const name = params.width === "100%" ? "fitWindow" : "resizeWindow";
        log(name, `${name}(${params.width}, ${params.height}) -> ${frame.dataset.height}px`);
        reply(message.key, {});
        break;
      }
      case "refreshAuth":
        log("refreshAuth", "refreshAuth()");
        try {
          const auth = await api("refresh-auth", { user_id: current.frame.user });
          Object.assign(current.frame.init, auth);
          reply(message.key, auth);
        } catch (error) {
          note("refreshAuth: " + error.message);
        }
        break;
      case "reloadWindow":
        log("reloadWindow", "reloadWindow()");
        reply(message.key, {});
        openFrame(current.kind, current.frame);
        break;
      case "setTitle":
        log("setTitle", `setTitle(${params.title || ""})`);
        byId("slider-title").textContent = String(params.title || "");
        reply(message.key, {});
        break;
      case "closeApplication":
        log("closeApplication", "closeApplication()");
        reply(message.key, {});
        closeSlider();
        break;
      default:
        note(`${message.command}: not simulated by the sandbox`);
        reply(message.key, {});
    }
  });

  function openFrame(kind, data) {
    current = { kind: kind, frame: data, loaded: false };
    postIntoFrame(data);
  }

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
    openFrame(kind, data);
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
