// The sandbox's Open Lines desk and customer pages: poll the stand-in's state, act with same-origin JSON POSTs.
(function () {
  "use strict";
  const byId = (id) => document.getElementById(id);
  const page = document.body.dataset.page;
  const sent = [];

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

  function item(text, attributes) {
    const li = document.createElement("li");
    li.textContent = text;
    for (const [key, value] of Object.entries(attributes || {})) li.dataset[key] = value;
    return li;
  }

  // --- the operator's desk -----------------------------------------------------------------------
  function renderDesk(data) {
    byId("desk-empty").hidden = data.chats.length > 0;
    const box = byId("chats");
    for (const chat of data.chats) {
      let section = byId(`chat-${chat.chat_id}`);
      if (!section) {
        section = document.createElement("section");
        section.id = `chat-${chat.chat_id}`;
        section.className = "card chat";
        const title = document.createElement("h2");
        const list = document.createElement("ol");
        list.className = "log messages";
        const form = document.createElement("form");
        const label = document.createElement("label");
        label.textContent = "Reply ";
        const input = document.createElement("input");
        input.type = "text";
        input.className = "reply-text";
        input.size = 50;
        label.append(input);
        const button = document.createElement("button");
        button.type = "submit";
        button.className = "reply-send";
        button.textContent = "Send";
        form.append(label, button);
        form.addEventListener("submit", async (event) => {
          event.preventDefault();
          try {
            const answer = await api("operator-reply", { chat_id: String(chat.chat_id), text: input.value });
            const delivery = answer.deliveries[0] || {};
            byId("desk-result").textContent = `OnImConnectorMessageAdd sent: ${delivery.error || "HTTP " + delivery.status}`;
            input.value = "";
          } catch (error) {
            byId("desk-result").textContent = "Reply: " + error.message;
          }
          tick();
        });
        section.append(title, list, form);
        box.append(section);
      }
      section.querySelector("h2").textContent =
        `Chat ${chat.chat_id} · line ${chat.line} · ${chat.customer} (outside chat ${chat.external_chat})`;
      const list = section.querySelector(".messages");
      list.replaceChildren(...chat.messages.map((m) => {
        const status = m.outside ? "" : (m.read ? " [read]" : m.delivered ? " [delivered]" : " [sent]");
        return item(`${m.outside ? chat.customer : "Operator"}: ${m.text}${m.deleted ? " (deleted)" : ""}${status}`, {
          id: m.id, side: m.outside ? "customer" : "operator",
          status: m.outside ? "" : (m.read ? "read" : m.delivered ? "delivered" : "sent"),
        });
      }));
    }
  }

  // --- the customer (the outside system) ---------------------------------------------------------
  function renderCustomer(data) {
    byId("webhook-url").textContent = data.webhookUrl;
    byId("replies").replaceChildren(...data.webhooks.map((hook) => {
      const body = hook.payload || {};
      const text = (body.message && body.message.text) || JSON.stringify(body);
      const li = item("", { signed: hook.signed ? "yes" : "no", event: body.event || "" });
      const span = document.createElement("span");
      span.className = "text";
      span.textContent = text;
      li.append(span);
      if (body.event === "message.add" && body.message && body.chat) {
        // The outside system reports that the customer read it: the channel's "read" action.
        const button = document.createElement("button");
        button.type = "button";
        button.className = "mark-read link";
        button.textContent = readSent[body.message.id] ? "read reported" : "Mark read";
        button.disabled = Boolean(readSent[body.message.id]);
        button.addEventListener("click", () => markRead(body.chat.id, body.message.id));
        li.append(" ", button);
      }
      return li;
    }));
  }

  const readSent = {};

  async function markRead(chatId, messageId) {
    try {
      const answer = await api("customer-send", {
        endpoint: byId("endpoint").value, secret: byId("secret").value, action: "read", chat_id: chatId,
        message_id: messageId,
      });
      byId("send-result").textContent = `read report: HTTP ${answer.status}${answer.answer.error ? " " + answer.answer.error : ""}`;
      byId("send-result").dataset.status = String(answer.status);
      if (answer.status < 300) readSent[messageId] = true;
    } catch (error) {
      byId("send-result").textContent = error.message;
    }
    tick();
  }

  if (page === "customer") {
    byId("customer-form").addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = byId("message-text").value;
      try {
        const answer = await api("customer-send", {
          endpoint: byId("endpoint").value, secret: byId("secret").value, chat_id: byId("chat-id").value,
          name: byId("customer-name").value, text: text,
        });
        const code = answer.answer.error ? ` ${answer.answer.error}: ${answer.answer.error_description}` : "";
        byId("send-result").textContent = `HTTP ${answer.status}${code}`;
        byId("send-result").dataset.status = String(answer.status);
        byId("send-result").dataset.error = answer.answer.error || "";
        sent.push(item(`${text} -> HTTP ${answer.status}${code}`, { status: String(answer.status) }));
        byId("sent").replaceChildren(...sent);
        if (answer.status < 300) byId("message-text").value = "";
      } catch (error) {
        byId("send-result").textContent = error.message;
        byId("send-result").dataset.status = "error";
      }
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
