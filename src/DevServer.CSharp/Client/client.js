// The Realtime dev server's browser client (an embedded resource of Realtime.DevServer, served at
// /__realtime__/client.js and injected into the dev server's HTML pages). It connects to
// /__realtime__/ws beside itself, runs the server's built-in messages (import, console-log,
// message-response), hands custom messages to the page's listeners, and reconnects by itself
// with exponential backoff and jitter. Pages and plugin modules may import it:
//   import { webSocket, webSocketOpened, sendMessage, sendMessageWaitForResponse, addMessageListener } from '/__realtime__/client.js';

const tag = '[realtime]';
const url = new URL('./ws', import.meta.url);
url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
const socketUrl = url.href;

const firstDelay = 100;
const maxDelay = 5000;
const defaultTimeout = 20000;

const listeners = new Set();
const pending = new Map();
let nextId = 1;
let attempts = 0;
let everOpened = false;
let lostLogged = false;
let resolveOpened;

/** The current WebSocket (a new one after each reconnect: this binding is live). */
export let webSocket;
/** A promise for the current WebSocket once it is open (replaced, pending, when the connection is lost). */
export let webSocketOpened;

function pendingOpen() {
  webSocketOpened = new Promise(resolve => { resolveOpened = resolve; });
}

function connect() {
  const socket = new WebSocket(socketUrl);
  let opened = false;
  webSocket = socket;
  socket.addEventListener('open', () => {
    opened = true;
    attempts = 0;
    if (everOpened) console.info(`${tag} reconnected to ${socketUrl}`);
    everOpened = true;
    lostLogged = false;
    resolveOpened(socket);
  });
  socket.addEventListener('message', event => {
    handle(event.data).catch(error => console.error(`${tag} failed to handle a message from the server:`, error));
  });
  socket.addEventListener('close', () => {
    if (webSocket !== socket) return;
    for (const [id, request] of pending) {
      if (request.socket === socket) {
        pending.delete(id);
        clearTimeout(request.timer);
        request.reject(new Error(`${tag} the connection closed before the response to "${request.type}" (id ${id})`));
      }
    }
    if (opened) pendingOpen();
    if (everOpened && !lostLogged) {
      lostLogged = true;
      console.info(`${tag} connection lost; reconnecting to ${socketUrl}`);
    }
    // Exponential backoff with jitter, so many pages do not all come back at the same instant.
    const delay = Math.min(maxDelay, firstDelay * 2 ** attempts) * (0.5 + Math.random() / 2);
    attempts = Math.min(attempts + 1, 16);
    setTimeout(connect, delay);
  });
}

async function handle(text) {
  let message;
  try {
    message = JSON.parse(text);
  } catch (error) {
    console.error(`${tag} dropped a message from the server that is not JSON: ${text}`);
    return;
  }
  if (message === null || typeof message !== 'object' || Array.isArray(message) || typeof message.type !== 'string') {
    console.error(`${tag} dropped a message from the server without a string "type": ${text}`);
    return;
  }
  switch (message.type) {
    case 'import':
      await runImport(message);
      break;
    case 'console-log':
      console.log(message.data && message.data.text);
      break;
    case 'message-response':
      respond(message);
      break;
    default:
      for (const listener of [...listeners]) {
        try {
          await listener(message);
        } catch (error) {
          console.error(`${tag} a message listener failed on a "${message.type}" message:`, error);
        }
      }
  }
}

async function runImport(message) {
  const data = message.data || {};
  const path = data.importPath;
  try {
    // The server sends same-origin paths and data: URLs only; a module from anywhere else is refused here too.
    const target = new URL(path, import.meta.url);
    if (target.protocol !== 'data:' && target.origin !== new URL(import.meta.url).origin) {
      throw new Error('refused: not on the dev server\'s origin');
    }
    const module = await import(target.href);
    // A module without a default export is imported for its side effects only (the data: URL case).
    if (module.default === undefined) return;
    if (typeof module.default !== 'function') throw new TypeError('the default export is not a function');
    await module.default(...(Array.isArray(data.args) ? data.args : []));
  } catch (error) {
    console.error(`${tag} import of ${String(path).slice(0, 200)} failed:`, error);
  }
}

function respond(message) {
  const request = pending.get(message.id);
  if (!request) {
    console.error(`${tag} a response arrived for no waiting request (id ${JSON.stringify(message.id)})`);
    return;
  }
  pending.delete(message.id);
  clearTimeout(request.timer);
  request.resolve(message.response);
}

/** Sends a message (a JSON object with a string "type") once the socket is open. */
export function sendMessage(message) {
  return webSocketOpened.then(socket => socket.send(JSON.stringify(message)));
}

/**
 * Sends a message with a new id and resolves with the server's response to it (a plugin's
 * event.Respond); rejects after `timeout` ms (20 s by default) or when the connection closes first.
 */
export function sendMessageWaitForResponse(message, { timeout = defaultTimeout } = {}) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const request = { resolve, reject, socket: null, type: message && message.type };
    request.timer = setTimeout(() => {
      pending.delete(id);
      reject(new Error(`${tag} no response to "${request.type}" (id ${id}) within ${timeout} ms`));
    }, timeout);
    pending.set(id, request);
    webSocketOpened.then(socket => {
      if (!pending.has(id)) return;
      request.socket = socket;
      socket.send(JSON.stringify({ ...message, id }));
    });
  });
}

/** Calls `listener(message)` for every custom message from the server; returns a function that removes it. */
export function addMessageListener(listener) {
  listeners.add(listener);
  return () => listeners.delete(listener);
}

pendingOpen();
connect();
