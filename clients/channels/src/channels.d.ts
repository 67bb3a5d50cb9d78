// TypeScript declarations of channels.js, the browser client of Realtime channels
// (the JSON form of the channels protocol, version 1).

/** The subprotocol the client asks for in `Sec-WebSocket-Protocol`. */
export declare const SUBPROTOCOL: 'realtime.channels.v1.json';

/** The protocol version the client speaks. */
export declare const PROTOCOL_VERSION: 1;

/** Any JSON value: what a publication, a request or presence info carries. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** Where a channel's history is: which sequence (epoch) and the offset of a publication in it. */
export interface Position {
  /** Names one history of the channel; offsets of different epochs are not comparable. */
  epoch: string;
  /** 1, 2, 3, ... with no gaps within an epoch; 0 before the first publication. */
  offset: number;
}

/** How a subscribe turned out. */
export type Recovery = 'fresh' | 'recovered' | 'not-recovered';

/** The connection's state. */
export type ConnectionState = 'connecting' | 'connected' | 'disconnected' | 'closed';

/** The error codes of the server and of the client. */
export type ChannelsErrorCode =
  | 'bad-message' | 'forbidden' | 'unknown-channel' | 'not-subscribed' | 'too-large'
  | 'rate-limited' | 'unknown-method' | 'internal' | 'too-many-channels'
  | 'queue-full' | 'queue-expired' | 'connection-lost' | 'timeout' | 'closed' | 'unsubscribed';

/**
 * An error the server answered with, or one the client raised: "queue-full" (did not fit in the
 * offline queue), "queue-expired" (waited longer than maxQueueAge for a connection),
 * "connection-lost" (a request whose answer the connection lost), "timeout" (a request not answered
 * within requestTimeout), "closed", "unsubscribed".
 */
export declare class ChannelsError extends Error {
  constructor(code: ChannelsErrorCode | string, message: string);
  readonly name: 'ChannelsError';
  /** The error's code. */
  readonly code: ChannelsErrorCode | string;
}

/** Options of connect. */
export interface ChannelsClientOptions {
  /** The first reconnect delay's bound in ms (default 250); each failed attempt doubles it. */
  minReconnectDelay?: number;
  /** The largest reconnect delay bound in ms (default 15000). Each delay is random up to the bound (full jitter). */
  maxReconnectDelay?: number;
  /** Bytes of publishes and requests that may wait for a connection (default 1 MiB). */
  maxQueueBytes?: number;
  /** How long in ms a publish or request may wait for a connection (default 60000). */
  maxQueueAge?: number;
  /**
   * How long in ms a request() may take from the call to its answer, waiting for a connection
   * included (default 30000; 0 for no limit); past it the promise rejects with "timeout".
   */
  requestTimeout?: number;
}

/** The events of a client's connection. */
export interface ConnectingEvent { state: 'connecting'; /** Failed attempts since the last connection. */ attempt: number; }
export interface ConnectedEvent { state: 'connected'; /** This connection's client id (from the server's welcome). */ clientId: string; }
export interface DisconnectedEvent {
  state: 'disconnected';
  /** The WebSocket close code (1006 when the connection failed or dropped). */
  code: number;
  /** Why, in words: the server's close reason, "could not connect", "the browser went offline", ... */
  reason: string;
  /** Always true: the client reconnects until close() is called. */
  willRetry: boolean;
  /** The delay in ms before the next attempt (sooner when the browser's online event fires). */
  retryIn: number;
}
export interface ClosedEvent { state: 'closed'; reason: string; }
export type StateEvent = ConnectingEvent | ConnectedEvent | DisconnectedEvent | ClosedEvent;

export interface ClientEvents {
  connecting: ConnectingEvent;
  connected: ConnectedEvent;
  disconnected: DisconnectedEvent;
  closed: ClosedEvent;
  /** Every state change. */
  state: StateEvent;
  /** An error the server sent without a request (id 0), or a message the client could not read. */
  error: ChannelsError;
}

/** A member of a channel's presence. */
export interface Member {
  /** The member connection's client id. */
  client: string;
  /** What the app chose to show of it. */
  info: Json;
}

/** A publication delivered to the app. */
export interface MessageEvent<T = Json> { channel: string; data: T; position: Position; }
export interface SubscribedEvent { channel: string; position: Position | null; recovery: Recovery; }
/** Every publication after `since` was delivered (`count` of them), before this event. */
export interface RecoveredEvent { channel: string; since: Position | null; position: Position | null; count: number; }
/** Publications after `since` are lost (history trimmed or a new epoch); emitted before what is still held is delivered. */
export interface NotRecoveredEvent { channel: string; since: Position | null; position: Position; }
/** A publication past the position revealed a gap: the client subscribes again from the position. */
export interface GapEvent { channel: string; position: Position | null; received: Position; }
export interface PresenceEvent extends Member { channel: string; }
export interface UnsubscribedEvent { channel: string; reason: string; }

export interface ChannelEvents<T = Json> {
  message: MessageEvent<T>;
  subscribed: SubscribedEvent;
  recovered: RecoveredEvent;
  'not-recovered': NotRecoveredEvent;
  gap: GapEvent;
  join: PresenceEvent;
  leave: PresenceEvent;
  /** The server ended the subscription. */
  unsubscribed: UnsubscribedEvent;
  /** The server refused a subscribe made again after a reconnect. */
  error: ChannelsError;
}

/** Options of a channel and of its subscribe. */
export interface ChannelOptions {
  /** Receive join and leave events (default false). */
  presence?: boolean;
  /** A position to recover from (for example one kept in sessionStorage across page loads). */
  since?: Position;
}

/** A channel of a client: its subscription, publishes and presence. */
export declare class Channel<T = Json> {
  private constructor();
  /** The channel's name. */
  readonly name: string;
  /** The subscription's state on the current connection. */
  readonly state: 'unsubscribed' | 'subscribing' | 'subscribed';
  /** The position of the last publication delivered to the app, or null. */
  readonly position: Position | null;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ChannelEvents<T>>(type: K, listener: (event: ChannelEvents<T>[K]) => void): () => void;
  /** Removes a listener. */
  off<K extends keyof ChannelEvents<T>>(type: K, listener: (event: ChannelEvents<T>[K]) => void): void;
  /** Subscribes, and again after every reconnect from the channel's position; resolves with the first answer. */
  subscribe(options?: ChannelOptions): Promise<{ position: Position | null; recovery: Recovery }>;
  /** Ends the subscription and forgets the position. */
  unsubscribe(): Promise<void>;
  /** Publishes; resolves with the publication's position when the server acknowledges it. */
  publish(data: T): Promise<Position>;
  /** Who is in the channel. */
  presence(): Promise<Member[]>;
}

/** A connection to a channels endpoint that reconnects by itself. */
export declare class ChannelsClient {
  constructor(url: string | URL, options?: ChannelsClientOptions);
  /** The socket URL (ws:// or wss://). */
  readonly url: string;
  /** The connection's state. */
  readonly state: ConnectionState;
  /** This connection's client id, or null while not connected. */
  readonly clientId: string | null;
  /** Bytes of publishes and requests waiting for a connection. */
  readonly queuedBytes: number;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): () => void;
  /** Removes a listener. */
  off<K extends keyof ClientEvents>(type: K, listener: (event: ClientEvents[K]) => void): void;
  /** The channel of this name (the same object for the same name). */
  channel<T = Json>(name: string, options?: ChannelOptions): Channel<T>;
  /**
   * Calls an app-defined method on the server; resolves with the response's data; rejects with
   * "timeout" after requestTimeout ms without an answer (a late answer is ignored).
   */
  request<R = Json>(method: string, data?: Json): Promise<R>;
  /** Closes the connection for good. */
  close(): void;
}

/** Connects to a channels endpoint (ws://, wss://, http://, https:// or a path relative to the page). */
export declare function connect(url: string | URL, options?: ChannelsClientOptions): ChannelsClient;
