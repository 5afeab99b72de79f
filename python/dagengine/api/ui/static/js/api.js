// The REST API and its server-sent event streams. With a token set on the server, a 401
// opens the token dialog; the token is kept in this tab's sessionStorage and sent as an
// Authorization header (never in a URL). Streams are read with fetch() rather than
// EventSource, which cannot send headers.

const TOKEN_KEY = "dagengine.token";
let asking = null;

function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

function headers(extra) {
  const out = {Accept: "application/json", ...(extra || {})};
  const t = token();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** Show the token dialog; resolves once a token was entered. */
export function askToken(message) {
  if (asking) return asking;
  const dialog = document.getElementById("token-dialog");
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  const error = document.getElementById("token-error");
  error.hidden = !message;
  error.textContent = message || "";
  input.value = "";
  asking = new Promise((resolve) => {
    const done = (event) => {
      event.preventDefault();
      const value = input.value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      form.removeEventListener("submit", done);
      dialog.close();
      asking = null;
      resolve(value);
    };
    form.addEventListener("submit", done);
    dialog.addEventListener("cancel", (e) => e.preventDefault(), {once: true});
  });
  dialog.showModal();
  input.focus();
  return asking;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function authorized(doFetch) {
  let resp = await doFetch();
  while (resp.status === 401) {
    await askToken(token() ? "That token was refused." : "");
    resp = await doFetch();
  }
  return resp;
}

/** Call the API: resolves to the JSON body, throws ApiError for an error status. */
export async function api(path, {method = "GET", body, signal} = {}) {
  const init = () => ({
    method,
    signal,
    headers: headers(body !== undefined ? {"Content-Type": "application/json"} : {}),
    body: body !== undefined ? JSON.stringify(body) : undefined,
  });
  const resp = await authorized(() => fetch(path, init()));
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = {error: text}; }
  if (!resp.ok) throw new ApiError(resp.status, data);
  return data;
}

/**
 * Follow a server-sent event stream: onEvent({id, event, data}) for each event (data parsed
 * as JSON). Resolves when the server ends the stream; rejects on an error status. With
 * resume, a dropped connection is resumed from the last id (Last-Event-ID); with reconnect,
 * so is a stream the server ended (one that should never end).
 */
// onOpen: called once the server answered (it subscribes before answering, so nothing
// published after onOpen is missed).
export async function stream(path, onEvent, {signal, reconnect = false, resume = false, onOpen = null} = {}) {
  let lastId = null;
  for (;;) {
    let ended = false;
    try {
      const resp = await authorized(() => fetch(path, {
        signal,
        headers: headers({Accept: "text/event-stream", ...(lastId ? {"Last-Event-ID": lastId} : {})}),
      }));
      if (!resp.ok) {
        let body = null;
        try { body = await resp.json(); } catch { body = null; }
        throw new ApiError(resp.status, body);
      }
      if (onOpen) onOpen();
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const {value, done} = await reader.read();
        if (done) break;
        // Split once per chunk (a chunk holds many events when a stream replays).
        const blocks = (buffer + value).split(/\r?\n\r?\n/);
        buffer = blocks.pop();
        for (const block of blocks) {
          const message = parseBlock(block);
          if (message) {
            if (message.id) lastId = message.id;
            onEvent(message);
          }
        }
      }
      ended = true;
    } catch (err) {
      if (signal && signal.aborted) return;
      if (!(reconnect || resume) || err instanceof ApiError) throw err;
    }
    if (ended && !reconnect) return;
    if (signal && signal.aborted) return;
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function parseBlock(block) {
  let id = null;
  let event = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (!line || line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") event = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return null;
  let parsed;
  try { parsed = JSON.parse(data.join("\n")); } catch { parsed = data.join("\n"); }
  return {id, event, data: parsed};
}
