// The browser client of Realtime channels (docs/channels-protocol.md, the JSON form of version 1).
// One ES module without dependencies or build step: the npm package @realtime/channels ships it as
// is, and Realtime.Channels serves the same file at /_realtime/channels.js.
//
//   import { connect } from '/_realtime/channels.js';
//   const client = connect('/channels');
//   const room = client.channel('room:lobby', { presence: true });
//   room.on('message', ({ data, position }) => console.log(data, position.offset));
//   await room.subscribe();
//   await room.publish({ text: 'hi' });

/** The subprotocol this client asks for in `Sec-WebSocket-Protocol`. */
export const SUBPROTOCOL = 'realtime.channels.v1.json';

/** The protocol version this client speaks. */
export const PROTOCOL_VERSION = 1;

const defaults = Object.freeze({
  minReconnectDelay: 250,
  maxReconnectDelay: 15000,
  maxQueueBytes: 1 << 20,
  maxQueueAge: 60000,
  requestTimeout: 30000,
});

// Request ids are integers 1 .. 2^32-1, unique among the requests in flight (the contract's rule).
const maxRequestId = 2 ** 32 - 1;
const encoder = new TextEncoder();

/**
 * An error the server answered with (its `code`: "forbidden", "bad-message", ...) or one the client
 * raised ("queue-full", "queue-expired", "connection-lost", "timeout", "closed").
 */
export class ChannelsError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ChannelsError';
    this.code = code;
  }
}

class Listeners {
  #byType = new Map();

  on(type, listener) {
    if (typeof listener !== 'function') throw new TypeError(`a listener for "${type}" must be a function`);
    let set = this.#byType.get(type);
    if (!set) this.#byType.set(type, (set = new Set()));
    set.add(listener);
    return () => this.off(type, listener);
  }

  off(type, listener) {
    this.#byType.get(type)?.delete(listener);
  }

  emit(type, detail) {
    const set = this.#byType.get(type);
    if (!set) return;
    for (const listener of [...set]) {
      // An app's listener that throws must not leave the client half way through a message.
      try {
        listener(detail);
      } catch (error) {
        if (typeof reportError === 'function') reportError(error);
        else console.error(error);
      }
    }
  }
}

function utf8Length(text) {
  return encoder.encode(text).length;
}

function randomKey() {
  if (typeof crypto.randomUUID === 'function') return crypto.randomUUID();
  // crypto.randomUUID exists in secure contexts only (https, localhost); getRandomValues everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, b => b.toString(16).padStart(2, '0')).join('');
}

function socketUrl(url) {
  const base = typeof location === 'undefined' ? undefined : location.href;
  const resolved = new URL(url, base);
  if (resolved.protocol === 'http:') resolved.protocol = 'ws:';
  else if (resolved.protocol === 'https:') resolved.protocol = 'wss:';
  return resolved.href;
}

function samePosition(position) {
  return position === null ? null : { epoch: position.epoch, offset: position.offset };
}

/**
 * Connects to a Realtime channels endpoint and keeps connecting after every loss, with exponential
 * backoff and full jitter, and at once when the browser comes back online.
 * @param {string | URL} url ws://, wss://, http://, https:// or a path relative to the page.
 * @param {object} [options] See ChannelsClientOptions in channels.d.ts.
 */
export function connect(url, options = {}) {
  return new ChannelsClient(url, options);
}

/** A connection to a channels endpoint that reconnects by itself; see connect. */
export class ChannelsClient {
  #url;
  #options;
  #listeners = new Listeners();
  #socket = null;
  #state = 'disconnected';
  #clientId = null;
  #attempt = 0;
  #retryTimer = null;
  #expiryTimer = null;
  #closed = false;
  #nextId = 1;
  #inFlight = new Map();
  #queue = [];
  #queuedBytes = 0;
  #channels = new Map();
  #onOnline = () => this.#reconnectNow();
  #onOffline = () => this.#wentOffline();
  #internals;

  constructor(url, options = {}) {
    this.#url = socketUrl(url);
    this.#options = { ...defaults, ...options };
    const o = this.#options;
    if (!(o.minReconnectDelay > 0) || !(o.maxReconnectDelay >= o.minReconnectDelay))
      throw new RangeError('minReconnectDelay must be over 0 and at most maxReconnectDelay');
    if (!(o.maxQueueBytes >= 0) || !(o.maxQueueAge >= 0)) throw new RangeError('maxQueueBytes and maxQueueAge must be 0 or more');
    if (!(o.requestTimeout >= 0)) throw new RangeError('requestTimeout must be 0 (none) or more');
    this.#internals = {
      connected: () => this.#state === 'connected',
      send: op => this.#send(op),
      request: op => this.#request(op),
      forget: channel => this.#channels.delete(channel.name),
    };
    if (typeof addEventListener === 'function') {
      addEventListener('online', this.#onOnline);
      addEventListener('offline', this.#onOffline);
    }
    // After the caller's synchronous code, so that listeners it adds right away see "connecting".
    queueMicrotask(() => this.#open());
  }

  /** The socket URL. */
  get url() { return this.#url; }

  /** "connecting", "connected" (the server's welcome arrived), "disconnected" or "closed". */
  get state() { return this.#state; }

  /** This connection's client id from the server's welcome (what presence shows), or null. */
  get clientId() { return this.#clientId; }

  /** Bytes of publishes and requests waiting for a connection. */
  get queuedBytes() { return this.#queuedBytes; }

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) { return this.#listeners.on(type, listener); }

  /** Removes a listener. */
  off(type, listener) { this.#listeners.off(type, listener); }

  /**
   * The channel of this name (the same object for the same name). Options: `presence` (receive join
   * and leave events), `since` (a position to recover from on the first subscribe).
   */
  channel(name, options = {}) {
    if (typeof name !== 'string' || name.length === 0 || utf8Length(name) > 256)
      throw new TypeError('a channel name is 1 to 256 UTF-8 bytes');
    let channel = this.#channels.get(name);
    if (!channel) {
      channel = new Channel(name, this.#internals, options);
      this.#channels.set(name, channel);
    }
    return channel;
  }

  /**
   * Calls an app-defined method on the server; resolves with the response's data. Rejects with
   * "timeout" when no answer came within the requestTimeout option (30 s) of the call.
   */
  request(method, data = null) {
    if (typeof method !== 'string' || method.length === 0) return Promise.reject(new TypeError('a method name is a non-empty string'));
    const op = { kind: 'request', message: { type: 'request', method, data }, retry: false, what: `request "${method}"` };
    return this.#request(op, this.#options.requestTimeout).then(answer => answer.data ?? null);
  }

  /** Closes the connection for good: no reconnect; what waits is rejected with "closed". */
  close() {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#retryTimer);
    clearTimeout(this.#expiryTimer);
    if (typeof removeEventListener === 'function') {
      removeEventListener('online', this.#onOnline);
      removeEventListener('offline', this.#onOffline);
    }
    const socket = this.#socket;
    this.#socket = null;
    if (socket) socket.close(1000, 'closed by the app');
    const error = new ChannelsError('closed', 'the client was closed');
    for (const op of [...this.#inFlight.values(), ...this.#queue]) {
      if (op.kind === 'unsubscribe') op.resolve();
      else if (op.kind !== 'subscribe') op.reject(error);
    }
    this.#inFlight.clear();
    this.#queue = [];
    this.#queuedBytes = 0;
    for (const channel of this.#channels.values()) channel[disconnected](error);
    this.#setState('closed', { reason: 'closed by the app' });
  }

  #setState(state, detail) {
    this.#state = state;
    const event = { state, ...detail };
    this.#listeners.emit(state, event);
    this.#listeners.emit('state', event);
  }

  #open() {
    if (this.#closed) return;
    this.#retryTimer = null;
    let socket;
    try {
      socket = new WebSocket(this.#url, SUBPROTOCOL);
    } catch (error) {
      this.#lost(null, 1006, `could not connect: ${error.message}`);
      return;
    }
    this.#socket = socket;
    let opened = false;
    socket.addEventListener('open', () => {
      opened = true;
      if (socket.protocol !== SUBPROTOCOL) socket.close(1000, 'subprotocol not negotiated');
    });
    socket.addEventListener('message', event => {
      if (this.#socket === socket) this.#receive(event.data);
    });
    socket.addEventListener('close', event => {
      const reason = !opened ? 'could not connect'
        : socket.protocol !== SUBPROTOCOL ? `the server did not accept the subprotocol ${SUBPROTOCOL}`
        : event.reason || 'the connection closed';
      this.#lost(socket, event.code, reason);
    });
    this.#setState('connecting', { attempt: this.#attempt });
  }

  #lost(socket, code, reason) {
    if (socket !== null && this.#socket !== socket) return;
    this.#socket = null;
    this.#clientId = null;
    // Publishes and presence queries are safe to send again (a publish keeps its key, so the server
    // deduplicates it); a request may have run, so its caller decides.
    const retried = [];
    for (const op of this.#inFlight.values()) {
      if (op.kind === 'subscribe') continue;
      if (op.kind === 'unsubscribe') op.resolve();
      else if (op.retry) retried.push(op);
      else op.reject(new ChannelsError('connection-lost', `the connection closed before the answer to ${op.what}`));
    }
    this.#inFlight.clear();
    retried.sort((a, b) => a.sequence - b.sequence);
    for (const op of retried) this.#queuedBytes += op.bytes;
    this.#queue = [...retried, ...this.#queue];
    for (const channel of this.#channels.values()) channel[disconnected](null);
    if (this.#closed) return;
    // Full jitter (a random delay up to the exponential bound): clients dropped together do not
    // come back together.
    const bound = Math.min(this.#options.maxReconnectDelay, this.#options.minReconnectDelay * 2 ** Math.min(this.#attempt, 30));
    const delay = Math.random() * bound;
    this.#attempt++;
    this.#retryTimer = setTimeout(() => this.#open(), delay);
    this.#scheduleExpiry();
    this.#setState('disconnected', { code, reason, willRetry: true, retryIn: delay });
  }

  // The browser says the network is gone: a socket may take long to notice (no close frame comes),
  // so it is closed now and the state says disconnected at once; "online" reconnects at once.
  #wentOffline() {
    const socket = this.#socket;
    if (this.#closed || socket === null) return;
    socket.close(1000, 'the browser went offline');
    this.#lost(socket, 1006, 'the browser went offline');
  }

  #reconnectNow() {
    if (this.#closed || this.#retryTimer === null) return;
    clearTimeout(this.#retryTimer);
    this.#open();
  }

  #receive(text) {
    let message;
    try {
      message = JSON.parse(text);
    } catch {
      this.#listeners.emit('error', new ChannelsError('bad-message', `the server sent a message that is not JSON: ${String(text).slice(0, 200)}`));
      return;
    }
    if (message === null || typeof message !== 'object' || typeof message.type !== 'string') return;
    switch (message.type) {
      case 'welcome': return this.#welcome(message);
      case 'pub': case 'join': case 'leave':
        return this.#channels.get(message.channel)?.[received](message);
      case 'unsubscribed':
        if (!message.id) return this.#channels.get(message.channel)?.[received](message);
        return this.#answer(message);
      case 'subscribed': case 'ack': case 'presence': case 'response': case 'error':
        return this.#answer(message);
      default:
        // A later minor addition to the protocol: ignored, as the contract lets clients do.
        return;
    }
  }

  #welcome(message) {
    if (message.version !== PROTOCOL_VERSION) {
      this.#socket?.close(1000, `protocol version ${message.version} is not ${PROTOCOL_VERSION}`);
      return;
    }
    this.#clientId = message.client;
    this.#attempt = 0;
    this.#setState('connected', { clientId: message.client });
    for (const channel of this.#channels.values()) channel[reconnected]();
    const queued = this.#queue;
    this.#queue = [];
    this.#queuedBytes = 0;
    this.#expire(queued);
    for (const op of queued) if (!op.expired) this.#send(op);
  }

  #answer(message) {
    const op = message.id ? this.#inFlight.get(message.id) : undefined;
    if (!op) {
      if (message.type === 'error') this.#listeners.emit('error', new ChannelsError(message.code, message.message));
      return;
    }
    this.#inFlight.delete(message.id);
    if (message.type === 'error') op.reject(new ChannelsError(message.code, message.message));
    else op.resolve(message);
  }

  #request(op, timeout = 0) {
    return new Promise((resolve, reject) => {
      let timer = null;
      op.resolve = answer => { clearTimeout(timer); resolve(answer); };
      op.reject = error => { clearTimeout(timer); reject(error); };
      if (timeout > 0) timer = setTimeout(() => this.#timedOut(op, timeout), timeout);
      this.#send(op);
    });
  }

  // Waiting or in flight, the request is given up: a late answer to its id is ignored.
  #timedOut(op, timeout) {
    if (op.id !== undefined && this.#inFlight.get(op.id) === op) this.#inFlight.delete(op.id);
    const waiting = this.#queue.indexOf(op);
    if (waiting >= 0) {
      this.#queue.splice(waiting, 1);
      this.#queuedBytes -= op.bytes;
      this.#scheduleExpiry();
    }
    op.reject(new ChannelsError('timeout', `no answer to ${op.what} within requestTimeout ${timeout} ms${op.sent ? '; it was sent, so it may have run' : ''}`));
  }

  #send(op) {
    if (this.#closed) {
      op.reject?.(new ChannelsError('closed', 'the client was closed'));
      return;
    }
    if (op.sequence === undefined) {
      op.sequence = this.#nextId;
      op.createdAt = Date.now();
    }
    if (this.#state !== 'connected') {
      // Subscriptions are state: each connection's welcome subscribes again. The rest waits here.
      if (op.kind === 'subscribe' || op.kind === 'unsubscribe') return;
      op.bytes ??= utf8Length(JSON.stringify(op.message));
      const limit = this.#options.maxQueueBytes;
      if (this.#queuedBytes + op.bytes > limit) {
        op.reject(new ChannelsError('queue-full', `${op.what} (${op.bytes} bytes) does not fit in the offline queue: ${this.#queuedBytes} of maxQueueBytes ${limit} bytes are taken`));
        return;
      }
      this.#queue.push(op);
      this.#queuedBytes += op.bytes;
      this.#scheduleExpiry();
      return;
    }
    const id = this.#nextRequestId();
    op.id = id;
    op.sent = true;
    this.#inFlight.set(id, op);
    const { type, ...rest } = op.message;
    this.#socket.send(JSON.stringify({ type, id, ...rest }));
    return id;
  }

  #nextRequestId() {
    for (;;) {
      const id = this.#nextId;
      this.#nextId = id === maxRequestId ? 1 : id + 1;
      if (!this.#inFlight.has(id)) return id;
    }
  }

  #scheduleExpiry() {
    clearTimeout(this.#expiryTimer);
    this.#expiryTimer = null;
    if (this.#queue.length === 0 || this.#closed) return;
    const oldest = this.#queue.reduce((min, op) => Math.min(min, op.createdAt), Infinity);
    const due = Math.max(0, oldest + this.#options.maxQueueAge - Date.now());
    this.#expiryTimer = setTimeout(() => {
      this.#expire(this.#queue);
      this.#queue = this.#queue.filter(op => !op.expired);
      this.#queuedBytes = this.#queue.reduce((sum, op) => sum + op.bytes, 0);
      this.#scheduleExpiry();
    }, due + 1);
  }

  #expire(ops) {
    const now = Date.now();
    const limit = this.#options.maxQueueAge;
    for (const op of ops) {
      const age = now - op.createdAt;
      if (age < limit) continue;
      op.expired = true;
      op.reject(new ChannelsError('queue-expired', `${op.what} waited ${age} ms without a connection (maxQueueAge ${limit} ms)${op.sent ? '; it was sent before the connection was lost, so it may have taken effect' : ''}`));
    }
  }
}

// Resubscribes for one gap, without any publication delivered in between, before giving up on it.
const maxFruitlessRecoveries = 3;

const received = Symbol('received');
const disconnected = Symbol('disconnected');
const reconnected = Symbol('reconnected');

/**
 * A channel of a client: its subscription (kept across reconnects, recovering from its position),
 * its publishes and its presence.
 */
export class Channel {
  #name;
  #client;
  #listeners = new Listeners();
  #wanted = false;
  #presence;
  #position = null;
  #state = 'unsubscribed';
  #subscribeId = 0;
  #recovering = null;
  #buffer = [];
  #waiters = [];
  #fruitless = 0;

  constructor(name, client, options) {
    this.#name = name;
    this.#client = client;
    this.#presence = options.presence === true;
    if (options.since) this.#position = samePosition(options.since);
  }

  /** The channel's name. */
  get name() { return this.#name; }

  /** "unsubscribed", "subscribing" or "subscribed". */
  get state() { return this.#state; }

  /** The position of the last publication delivered to the app ({ epoch, offset }), or null. */
  get position() { return samePosition(this.#position); }

  /** Adds a listener; returns a function that removes it. */
  on(type, listener) { return this.#listeners.on(type, listener); }

  /** Removes a listener. */
  off(type, listener) { this.#listeners.off(type, listener); }

  /**
   * Subscribes (again after every reconnect, from the channel's position). Resolves with the first
   * `subscribed` answer: { position, recovery }. Options: `since`, `presence`.
   */
  subscribe(options = {}) {
    if (options.presence !== undefined) this.#presence = options.presence === true;
    if (options.since) this.#position = samePosition(options.since);
    return new Promise((resolve, reject) => {
      if (this.#wanted && this.#state === 'subscribed' && !options.since) {
        resolve({ position: this.position, recovery: 'fresh' });
        return;
      }
      this.#waiters.push({ resolve, reject });
      this.#wanted = true;
      if (this.#client.connected() && (this.#state === 'unsubscribed' || options.since)) this.#subscribeNow();
    });
  }

  /** Ends the subscription (and forgets the position). */
  unsubscribe() {
    const was = this.#state;
    this.#wanted = false;
    this.#reset();
    this.#forgetRecovery();
    this.#position = null;
    this.#rejectWaiters(new ChannelsError('unsubscribed', `unsubscribed from ${this.#name} before the server answered`));
    if (was === 'unsubscribed' || !this.#client.connected()) return Promise.resolve();
    return this.#client.request({ kind: 'unsubscribe', message: { type: 'unsubscribe', channel: this.#name }, retry: false, what: `unsubscribe from "${this.#name}"` })
      .then(() => undefined);
  }

  /**
   * Publishes `data` (any JSON value). Resolves with the publication's position when the server
   * acknowledges it; while disconnected it waits in the offline queue, and a publish the connection
   * lost before its acknowledgement is sent again after reconnecting with the same key, so the
   * server applies it once.
   */
  publish(data) {
    const key = randomKey();
    const json = JSON.stringify(data === undefined ? null : data);
    return this.#client.request({ kind: 'publish', message: { type: 'publish', channel: this.#name, key, data: JSON.parse(json) }, retry: true, key, what: `publish to "${this.#name}"` })
      .then(ack => ({ epoch: ack.epoch, offset: ack.offset }));
  }

  /** Who is in the channel: resolves with [{ client, info }]. */
  presence() {
    return this.#client.request({ kind: 'presence', message: { type: 'presence', channel: this.#name }, retry: true, what: `presence of "${this.#name}"` })
      .then(answer => (answer.members ?? []).map(member => ({ client: member.client, info: member.info ?? null })));
  }

  #reset() {
    this.#state = 'unsubscribed';
    this.#subscribeId = 0;
    this.#buffer = [];
  }

  #forgetRecovery() {
    this.#recovering = null;
    this.#fruitless = 0;
  }

  #rejectWaiters(error) {
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.reject(error);
  }

  #subscribeNow() {
    // One recovery may take several subscribes (a gap among what came back, a paged answer, a
    // reconnect): it is told to the app once, from where it started, when the channel is live again.
    this.#recovering ??= { since: samePosition(this.#position), count: 0, lost: false };
    this.#buffer = [];
    this.#state = 'subscribing';
    const message = { type: 'subscribe', channel: this.#name };
    if (this.#position !== null) message.since = samePosition(this.#position);
    if (this.#presence) message.presence = true;
    const op = {
      kind: 'subscribe', message, retry: false, what: `subscribe to "${this.#name}"`,
      resolve: answer => this.#subscribed(op, answer),
      reject: error => this.#refused(op, error),
    };
    op.id = this.#client.send(op);
    this.#subscribeId = op.id;
  }

  #subscribed(op, answer) {
    if (op.id !== this.#subscribeId || !this.#wanted) return;
    const recovering = this.#recovering;
    const answered = { epoch: answer.epoch, offset: answer.offset };
    // Recovered publications come before the answer and live ones after; a publication that
    // revealed a gap was held too. In offset order, those of the answered epoch only.
    const held = this.#buffer.filter(pub => pub.epoch === answered.epoch).sort((a, b) => a.offset - b.offset);
    this.#buffer = [];
    this.#state = 'subscribed';
    this.#subscribeId = 0;
    if (answer.recovery === 'fresh' || this.#position === null) {
      // A server that answers a subscribe with since as fresh recovered nothing: that is a loss too.
      if (this.#position !== null && (this.#position.epoch !== answered.epoch || this.#position.offset < answered.offset)) this.#lost(answered);
      this.#position = answered;
    } else if (answer.recovery === 'not-recovered') {
      // What the history still holds follows: delivery resumes at its first publication.
      const start = held.length === 0 ? answered.offset : held[0].offset - 1;
      if (this.#position.epoch !== answered.epoch || start > this.#position.offset) {
        this.#lost(answered);
        this.#position = { epoch: answered.epoch, offset: start };
      }
    }
    let delivered = 0;
    for (let i = 0; i < held.length; i++) {
      if (this.#state !== 'subscribed') {
        // A gap among the held publications started another recovery: the rest waits for it.
        this.#buffer.push(...held.slice(i));
        return;
      }
      if (this.#apply(held[i])) delivered++;
    }
    if (this.#state !== 'subscribed') return;
    recovering.count += delivered;
    const position = this.#position;
    if (position.epoch === answered.epoch && position.offset < answered.offset) {
      // Behind the answer: a paged recovery (the contract lets a server send the first part and
      // answer), so ask again from here; an answer that keeps sending nothing is a loss.
      if (delivered > 0 || ++this.#fruitless <= maxFruitlessRecoveries) {
        this.#subscribeNow();
        return;
      }
      this.#fruitless = 0;
      this.#lost(answered);
      this.#position = answered;
    }
    this.#recovering = null;
    const recovery = answer.recovery === 'fresh' ? 'fresh' : recovering.lost ? 'not-recovered' : 'recovered';
    if (recovery === 'recovered') this.#listeners.emit('recovered', { channel: this.#name, since: recovering.since, position: this.position, count: recovering.count });
    this.#listeners.emit('subscribed', { channel: this.#name, position: this.position, recovery });
    const waiters = this.#waiters;
    this.#waiters = [];
    for (const waiter of waiters) waiter.resolve({ position: this.position, recovery });
  }

  // Tells the app, once per recovery, that publications after its position are lost.
  #lost(position) {
    const recovering = this.#recovering;
    if (recovering?.lost) return;
    if (recovering) recovering.lost = true;
    this.#listeners.emit('not-recovered', { channel: this.#name, since: this.position, position: samePosition(position) });
  }

  #refused(op, error) {
    if (op.id !== this.#subscribeId) return;
    this.#wanted = false;
    this.#reset();
    this.#forgetRecovery();
    this.#rejectWaiters(error);
    this.#listeners.emit('error', error);
  }

  // The contract's delivery rule: deliver offset = position + 1 of the same epoch, drop what is not
  // past the position (a duplicate), and on a gap or another epoch subscribe again from the position.
  #apply(pub) {
    const position = this.#position;
    if (pub.epoch === position.epoch && pub.offset <= position.offset) return false;
    if (pub.epoch === position.epoch && pub.offset === position.offset + 1) {
      this.#fruitless = 0;
      this.#position = { epoch: pub.epoch, offset: pub.offset };
      this.#listeners.emit('message', { channel: this.#name, data: pub.data, position: { epoch: pub.epoch, offset: pub.offset } });
      return true;
    }
    this.#listeners.emit('gap', { channel: this.#name, position: this.position, received: { epoch: pub.epoch, offset: pub.offset } });
    if (++this.#fruitless > maxFruitlessRecoveries) {
      // The server answered "recovered" and still did not send what follows the position: told as
      // a loss rather than asked for again without end.
      this.#fruitless = 0;
      this.#lost({ epoch: pub.epoch, offset: pub.offset });
      this.#position = { epoch: pub.epoch, offset: pub.offset - 1 };
      return this.#apply(pub);
    }
    this.#subscribeNow();
    this.#buffer.push(pub);
    return false;
  }

  [received](message) {
    if (!this.#wanted) return;
    switch (message.type) {
      case 'pub':
        if (this.#state === 'subscribing') this.#buffer.push(message);
        else if (this.#state === 'subscribed') this.#apply(message);
        return;
      case 'join':
      case 'leave':
        this.#listeners.emit(message.type, { channel: this.#name, client: message.member?.client, info: message.member?.info ?? null });
        return;
      case 'unsubscribed':
        this.#wanted = false;
        this.#reset();
        this.#forgetRecovery();
        this.#rejectWaiters(new ChannelsError('unsubscribed', `the server ended the subscription to ${this.#name}`));
        this.#listeners.emit('unsubscribed', { channel: this.#name, reason: 'the server ended the subscription' });
        return;
    }
  }

  [disconnected](error) {
    this.#reset();
    if (error) this.#rejectWaiters(error);
  }

  [reconnected]() {
    if (this.#wanted) this.#subscribeNow();
  }
}
