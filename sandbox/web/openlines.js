// The sandbox's Open Lines desk and customer pages: poll the stand-in's state each second, act with same-origin
// JSON POSTs, and show both sides as a chat (bubbles, times, delivery ticks).
(function () {
  "use strict";
  const byId = (id) => document.getElementById(id);
  const page = document.body.dataset.page;
  const SENT_KEY = "b24-sandbox:customer-sent:" + location.host;
  const READ_KEY = "b24-sandbox:customer-read:" + location.host;
  // What the customer sent (this page's own log: the app's answers are not stored anywhere else).
  const sent = JSON.parse(sessionStorage.getItem(SENT_KEY) || "[]");
  const readSent = JSON.parse(sessionStorage.getItem(READ_KEY) || "{}");

  async function api(action, body) {
    const answer = await fetch(`/sandbox/api/${action}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const data = await answer.json();
    if (!answer.ok) throw new Error(data.error_description || data.error || `HTTP ${answer.status}`);
    return data;
  }

  async function state() {
    const answer = await fetch("/sandbox/api/openlines-state", { cache: "no-store" });
    return answer.json();
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clock(seconds) {
    if (!seconds) return "";
    return new Date(seconds * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  // One message: author, text, then the time (and, for the side that waits for a status, its ticks).
  function bubble({ side, author, text, at, status, statusLabel, deleted, attributes }) {
    const li = el("li", "bubble-row");
    li.dataset.side = side;
    for (const [key, value] of Object.entries(attributes || {})) li.dataset[key] = value;
    const box = el("div", "bubble");
    if (author) box.append(el("span", "author", author));
    const body = el("span", "text", text);
    if (deleted) body.classList.add("deleted");
    box.append(body);
    const meta = el("span", "meta");
    if (at) {
      const time = el("time", "", clock(at));
      time.dateTime = new Date(at * 1000).toISOString();
      meta.append(time);
    }
    if (status) {
      const ticks = el("span", "ticks", status === "sent" ? "✓" : "✓✓");
      ticks.dataset.status = status;
      ticks.title = statusLabel || status;
      ticks.setAttribute("aria-hidden", "true");
      meta.append(ticks, el("span", "visually-hidden", statusLabel || status));
    }
    box.append(meta);
    li.append(box);
    return li;
  }

  function initials(name) {
    return (name || "?").split(/\s+/).filter(Boolean).slice(0, 2).map((w) => w.charAt(0).toUpperCase()).join("");
  }

  // Re-render a list only when what it shows changed, and then keep the newest message in view.
  function fill(list, items, key) {
    if (list.dataset.key === key) return;
    const atEnd = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
    list.replaceChildren(...items);
    if (atEnd || !list.dataset.key) list.scrollTop = list.scrollHeight;
    list.dataset.key = key;
  }

  // --- the operator's desk -----------------------------------------------------------------------
  function chatSection(chat) {
    const section = el("section", "chat");
    section.id = `chat-${chat.chat_id}`;
    section.setAttribute("aria-labelledby", `chat-${chat.chat_id}-title`);
    const head = el("header", "chat-head");
    const avatar = el("span", "avatar", initials(chat.customer));
    avatar.setAttribute("aria-hidden", "true");
    const title = el("div");
    const h2 = el("h2");
    h2.id = `chat-${chat.chat_id}-title`;
    title.append(h2, el("p", "muted chat-info"));
    head.append(avatar, title);
    const list = el("ol", "messages");
    list.setAttribute("aria-label", "Messages");
    const form = el("form", "composer");
    const label = el("label", "visually-hidden", "Reply");
    const input = el("input", "reply-text");
    input.type = "text";
    input.placeholder = "Write a reply…";
    input.autocomplete = "off";
    input.id = `reply-${chat.chat_id}`;
    label.htmlFor = input.id;
    const button = el("button", "reply-send", "Send");
    button.type = "submit";
    form.append(label, input, button);
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      if (!input.value.trim()) { input.focus(); return; }
      button.disabled = true;
      try {
        const answer = await api("operator-reply", { chat_id: String(chat.chat_id), text: input.value });
        const delivery = answer.deliveries[0] || {};
        byId("desk-result").textContent = `OnImConnectorMessageAdd sent: ${delivery.error || "HTTP " + delivery.status}`;
        input.value = "";
      } catch (error) {
        byId("desk-result").textContent = "Reply: " + error.message;
      }
      button.disabled = false;
      input.focus();
      tick();
    });
    section.append(head, list, form);
    return section;
  }

  const STATUS = { sent: "sent", delivered: "delivered", read: "read" };

  function renderDesk(data) {
    byId("desk-empty").hidden = data.chats.length > 0;
    const box = byId("chats");
    for (const chat of data.chats) {
      let section = byId(`chat-${chat.chat_id}`);
      if (!section) {
        section = chatSection(chat);
        box.prepend(section);  // the newest conversation first
      }
      section.querySelector("h2").textContent = chat.customer;
      const line = chat.line_name ? `${chat.line_name} (line ${chat.line})` : `line ${chat.line}`;
      section.querySelector(".chat-info").textContent =
        `Chat ${chat.chat_id} · ${line} · outside chat ${chat.external_chat}`;
      const items = chat.messages.map((m) => {
        if (m.system) {
          const li = el("li", "bubble-row");
          li.dataset.side = "system";
          li.append(el("span", "system", m.text));
          return li;
        }
        const status = m.outside ? "" : (m.read ? "read" : m.delivered ? "delivered" : "sent");
        return bubble({
          side: m.outside ? "customer" : "operator",
          author: m.outside ? chat.customer : (m.author || "Operator"),
          text: m.deleted ? "(deleted)" : m.text,
          deleted: m.deleted,
          at: m.at,
          status: status,
          statusLabel: STATUS[status],
          attributes: { id: String(m.id), status: status },
        });
      });
      fill(section.querySelector(".messages"), items, JSON.stringify(chat.messages));
    }
  }

  // --- the customer (the outside system) ---------------------------------------------------------
  function remember() {
    sessionStorage.setItem(SENT_KEY, JSON.stringify(sent.slice(-200)));
    sessionStorage.setItem(READ_KEY, JSON.stringify(readSent));
  }

  function say(text, status, error) {
    const result = byId("send-result");
    result.textContent = text;
    result.dataset.status = status;
    result.dataset.error = error || "";
    result.className = "send-result" + (status !== "error" && Number(status) < 300 ? " ok" : " bad");
  }

  function renderCustomer(data) {
    byId("webhook-url").textContent = data.webhookUrl;
    const items = [];
    for (const message of sent) {
      const ok = message.status < 300;
      const row = bubble({
        side: "customer", text: message.text, at: message.at,
        status: ok ? "sent" : "", statusLabel: ok ? `accepted (HTTP ${message.status})` : "",
        attributes: { status: String(message.status) },
      });
      if (!ok) row.querySelector(".bubble").append(el("span", "refused", `not accepted: HTTP ${message.status} ${message.error || ""}`));
      items.push({ at: message.at, node: row });
    }
    for (const hook of data.webhooks) {
      const body = hook.payload || {};
      const message = body.message || {};
      if (body.event === "message.add" || !body.event) {
        const row = bubble({
          side: "operator",
          author: (message.author && message.author.name) || "Operator",
          text: message.text || JSON.stringify(body),
          at: hook.at,
          attributes: { signed: hook.signed ? "yes" : "no", event: body.event || "" },
        });
        const meta = row.querySelector(".meta");
        meta.prepend(el("span", "signed", hook.signed ? "signed" : "unsigned"));
        if (body.event === "message.add" && body.chat) {
          // The outside system reports that the customer read it: the channel's "read" action.
          const button = el("button", "mark-read link", readSent[message.id] ? "read reported" : "Mark read");
          button.type = "button";
          button.disabled = Boolean(readSent[message.id]);
          button.addEventListener("click", () => markRead(body.chat.id, message.id));
          meta.append(button);
        }
        items.push({ at: hook.at, node: row });
      } else {
        // message.update / message.delete: what changed, as a note in the conversation.
        const li = el("li", "bubble-row");
        li.dataset.side = "system";
        li.dataset.event = body.event;
        li.dataset.signed = hook.signed ? "yes" : "no";
        const what = body.event === "message.delete" ? "The operator deleted a message" : `The operator edited a message: ${message.text || ""}`;
        li.append(el("span", "system", what));
        items.push({ at: hook.at, node: li });
      }
    }
    items.sort((a, b) => a.at - b.at);
    byId("conversation-empty").hidden = items.length > 0;
    fill(byId("conversation"), items.map((item) => item.node),
      JSON.stringify([sent, data.webhooks.map((h) => h.at), readSent]));
  }

  async function markRead(chatId, messageId) {
    try {
      const answer = await api("customer-send", {
        endpoint: byId("endpoint").value, secret: byId("secret").value, action: "read", chat_id: chatId,
        message_id: messageId,
      });
      say(`read report: HTTP ${answer.status}${answer.answer.error ? " " + answer.answer.error : ""}`,
        String(answer.status), answer.answer.error);
      if (answer.status < 300) { readSent[messageId] = true; remember(); }
    } catch (error) {
      say(error.message, "error");
    }
    tick();
  }

  if (page === "customer") {
    byId("customer-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = byId("message-text").value;
      for (const id of ["endpoint", "secret"]) {
        if (!byId(id).value) {
          say("Paste the channel's inbound URL and secret first (Connection).", "error");
          byId(id).focus();
          return;
        }
      }
      if (!text.trim()) { byId("message-text").focus(); return; }
      try {
        const answer = await api("customer-send", {
          endpoint: byId("endpoint").value, secret: byId("secret").value, chat_id: byId("chat-id").value,
          name: byId("customer-name").value, text: text,
        });
        const code = answer.answer.error ? ` ${answer.answer.error}: ${answer.answer.error_description}` : "";
        say(`HTTP ${answer.status}${code}`, String(answer.status), answer.answer.error);
        sent.push({ text: text, at: Date.now() / 1000, status: answer.status, error: answer.answer.error || "" });
        remember();
        if (answer.status < 300) byId("message-text").value = "";
      } catch (error) {
        say(error.message, "error");
      }
      tick();
    });
  }

  async function tick() {
    try {
      const data = await state();
      if (page === "desk") renderDesk(data);
      else renderCustomer(data);
    } catch (error) {
      // the sandbox stopped: keep the last view
    }
  }

  tick();
  setInterval(tick, 1000);
})();
