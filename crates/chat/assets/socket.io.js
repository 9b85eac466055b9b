/*
 * chatctl's Socket.IO client: a small, dependency-free client for Socket.IO v5 over Engine.IO v4,
 * written from the protocol (DESIGN.md §4). The chat server serves it at /socket.io/socket.io.js.
 * It runs in browsers and in Node >= 20 (global fetch, plus the global WebSocket that Node 22 has
 * and Node 20 gets with --experimental-websocket).
 *
 *   const socket = io("/chat_com", { auth: { token } });
 *   socket.on("connect", () => socket.emit("message", text, (reply) => console.log(reply)));
 *
 * Layers, bottom up:
 *   Emitter                      on / off / once, used by everything below
 *   Engine.IO codec              packets "<type><data>", polling payloads joined by \x1e, "b"+base64
 *   Polling, WebSocketTransport  one Engine.IO connection's transports
 *   EngineSocket                 handshake, heartbeat, write buffer, upgrade from polling
 *   Socket.IO codec              "<type>[<n>-][<nsp>,][<id>][json]" with binary attachments
 *   Manager                      one Engine.IO connection per origin + path, shared by the
 *                                namespaces, reconnecting with exponential backoff
 *   Socket                       one namespace: events, acks, buffering, connect / disconnect
 *   io()                         the entry point, with the cache of managers
 *
 * Not supported: Blob / File arguments (send an ArrayBuffer), connection state recovery.
 */
(function (root) {
  "use strict";

  // ---------------------------------------------------------------------------------------------
  // Emitter

  class Emitter {
    constructor() {
      this._listeners = new Map();
    }

    on(event, fn) {
      const list = this._listeners.get(event);
      if (list) list.push(fn);
      else this._listeners.set(event, [fn]);
      return this;
    }

    once(event, fn) {
      const wrapper = (...args) => {
        this.off(event, wrapper);
        fn.apply(this, args);
      };
      wrapper.listener = fn; // so that off(event, fn) finds it
      return this.on(event, wrapper);
    }

    /** off() removes every listener, off(event) those of one event, off(event, fn) one. */
    off(event, fn) {
      if (event === undefined) this._listeners.clear();
      else if (fn === undefined) this._listeners.delete(event);
      else {
        const list = this._listeners.get(event) || [];
        const i = list.findIndex((l) => l === fn || l.listener === fn);
        if (i >= 0) list.splice(i, 1);
        if (!list.length) this._listeners.delete(event);
      }
      return this;
    }

    listeners(event) {
      return (this._listeners.get(event) || []).slice();
    }

    /**
     * Calls the listeners of a local event. Named apart from `emit`, which on a Socket sends to
     * the server. An exception in a listener is rethrown on its own stack: it must not abort the
     * protocol code that happened to deliver the event (a packet loop, a fetch continuation).
     */
    _fire(event, ...args) {
      for (const fn of this.listeners(event)) {
        try {
          fn.apply(this, args);
        } catch (err) {
          setTimeout(() => {
            throw err;
          });
        }
      }
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Binary helpers

  function isBinary(value) {
    return (
      typeof ArrayBuffer === "function" &&
      (value instanceof ArrayBuffer || ArrayBuffer.isView(value))
    );
  }

  function bytesOf(data) {
    return data instanceof ArrayBuffer
      ? new Uint8Array(data)
      : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }

  function toBase64(data) {
    const bytes = bytesOf(data);
    let text = "";
    // In slices: String.fromCharCode.apply has an argument-count limit.
    for (let i = 0; i < bytes.length; i += 0x8000) {
      text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(text);
  }

  function fromBase64(text) {
    const chars = atob(text);
    const bytes = new Uint8Array(chars.length);
    for (let i = 0; i < chars.length; i++) bytes[i] = chars.charCodeAt(i);
    return bytes.buffer;
  }

  function utf8Length(text) {
    let n = 0;
    for (let i = 0; i < text.length; i++) {
      const c = text.charCodeAt(i);
      if (c < 0x80) n += 1;
      else if (c < 0x800) n += 2;
      else if (c >= 0xd800 && c < 0xdc00) {
        n += 4; // a surrogate pair: one 4-byte character
        i++;
      } else n += 3;
    }
    return n;
  }

  // ---------------------------------------------------------------------------------------------
  // Engine.IO codec. A packet is { type, data }, data a string or (for "message") binary.

  const ENGINE_TYPES = ["open", "close", "ping", "pong", "message", "upgrade", "noop"];
  const RECORD_SEPARATOR = "\x1e"; // joins packets in a polling body

  /** Text for polling (binary as "b" + base64); text or binary frames for a websocket. */
  function encodeEnginePacket(packet, forPolling) {
    if (isBinary(packet.data)) return forPolling ? "b" + toBase64(packet.data) : packet.data;
    return ENGINE_TYPES.indexOf(packet.type) + (packet.data === undefined ? "" : packet.data);
  }

  /** A packet, or null if the input is not one. */
  function decodeEnginePacket(data) {
    if (typeof data !== "string") return { type: "message", data: data };
    if (data.charAt(0) === "b") {
      try {
        return { type: "message", data: fromBase64(data.slice(1)) };
      } catch (err) {
        return null;
      }
    }
    const type = ENGINE_TYPES[data.charCodeAt(0) - 48];
    if (!type) return null;
    return { type: type, data: data.length > 1 ? data.slice(1) : undefined };
  }

  /** Bytes a packet takes in a polling body, to keep POSTs within the server's maxPayload. */
  function pollingLength(packet) {
    return isBinary(packet.data)
      ? 1 + Math.ceil(bytesOf(packet.data).length / 3) * 4
      : 1 + utf8Length(packet.data === undefined ? "" : packet.data);
  }

  // ---------------------------------------------------------------------------------------------
  // Transports. Both fire "packet" (an Engine.IO packet), "drain" (everything given to send()
  // is written) and "close" (reason, error) where reason is "transport error", "transport close"
  // or "parse error". Nothing is fired after close().

  /** HTTP long-polling over fetch: one GET waiting for packets, at most one POST sending. */
  class Polling extends Emitter {
    constructor(engine) {
      super();
      this.name = "polling";
      this.engine = engine;
      this.writable = true; // false while a POST is in flight: the server allows one at a time
      this._polling = false; // a GET is in flight
      this._pausing = null; // callback waiting for the requests in flight to end (upgrade)
      this._paused = false;
      this._closed = false;
      this._abort = null;
    }

    open() {
      this._poll();
    }

    _request(method, body) {
      const opts = this.engine.opts;
      const headers = Object.assign({}, opts.extraHeaders);
      if (body !== undefined) headers["Content-Type"] = "text/plain;charset=UTF-8";
      const init = {
        method: method,
        headers: headers,
        body: body,
        credentials: opts.withCredentials ? "include" : "same-origin",
      };
      if (method === "GET") {
        this._abort = new AbortController();
        init.signal = this._abort.signal;
      }
      return fetch(this.engine._url("polling"), init).then((res) =>
        res.text().then((text) => {
          if (res.ok) return text;
          const err = new Error(method === "GET" ? "xhr poll error" : "xhr post error");
          err.description = res.status;
          // The server's JSON error, e.g. {"code":1,"message":"Session ID unknown"}.
          err.context = text;
          throw err;
        })
      );
    }

    _poll() {
      if (this._closed || this._paused || this._pausing) return;
      this._polling = true;
      this._request("GET").then(
        (body) => {
          if (this._closed) return;
          for (const text of body.split(RECORD_SEPARATOR)) {
            const packet = decodeEnginePacket(text);
            if (!packet) return this._fail("parse error", new Error("invalid packet: " + text));
            this._fire("packet", packet);
            if (this._closed) return; // a close packet, or a listener closed us
          }
          this._polling = false; // only now: an upgrade must not switch in the middle of a body
          if (this._pausing) this._checkPaused();
          else this._poll();
        },
        (err) => {
          this._polling = false;
          this._fail("transport error", err.message === "xhr poll error" ? err : pollError(err));
        }
      );
    }

    send(packets) {
      this.writable = false;
      const body = packets.map((p) => encodeEnginePacket(p, true)).join(RECORD_SEPARATOR);
      this._request("POST", body).then(
        () => {
          if (this._closed) return;
          this.writable = true;
          this._fire("drain");
          this._checkPaused();
        },
        (err) => this._fail("transport error", err)
      );
    }

    /** Stops polling once the GET and POST in flight are done, then calls onPaused. */
    pause(onPaused) {
      this._pausing = onPaused;
      this._checkPaused();
    }

    /** Polls again after an upgrade that failed. */
    resume() {
      this._pausing = null;
      this._paused = false;
      if (!this._polling) this._poll();
    }

    _checkPaused() {
      if (!this._pausing || this._polling || !this.writable || this._closed) return;
      const onPaused = this._pausing;
      this._pausing = null;
      this._paused = true;
      onPaused();
    }

    _fail(reason, err) {
      if (this._closed) return;
      this.close();
      this._fire("close", reason, err);
    }

    /** Ends the pending GET. The close packet, if any, was already sent by the engine. */
    close() {
      this._closed = true;
      if (this._abort) this._abort.abort();
    }
  }

  function pollError(cause) {
    const err = new Error("xhr poll error");
    err.description = cause;
    return err;
  }

  /** A websocket: one Engine.IO packet per frame, binary as binary frames. */
  class WebSocketTransport extends Emitter {
    constructor(url) {
      super();
      this.name = "websocket";
      this.url = url;
      this.writable = false; // until the socket opens
      this._closed = false;
      this._ws = null;
    }

    open() {
      let ws;
      try {
        if (typeof WebSocket !== "function") {
          throw new Error("no global WebSocket (Node 20: run with --experimental-websocket)");
        }
        ws = new WebSocket(this.url);
      } catch (cause) {
        // Asynchronous like every other failure, so that callers see one behaviour.
        setTimeout(() => this._fail("transport error", wsError(cause)));
        return;
      }
      this._ws = ws;
      ws.binaryType = "arraybuffer";
      ws.onopen = () => {
        this.writable = true;
        this._fire("open");
      };
      ws.onmessage = (event) => {
        const packet = decodeEnginePacket(event.data);
        if (!packet) return this._fail("parse error", new Error("invalid packet"));
        this._fire("packet", packet);
      };
      ws.onerror = (event) => this._fail("transport error", wsError(event));
      ws.onclose = (event) => {
        const err = new Error("websocket connection closed");
        err.description = event;
        this._fail("transport close", err);
      };
    }

    send(packets) {
      for (const packet of packets) {
        if (this._closed) return;
        this._ws.send(encodeEnginePacket(packet, false));
      }
      this._fire("drain");
    }

    _fail(reason, err) {
      if (this._closed) return;
      this.close();
      this._fire("close", reason, err);
    }

    close() {
      this._closed = true;
      const ws = this._ws;
      if (!ws) return;
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        ws.close();
      } catch (err) {
        // closing a socket that never opened may throw in old browsers; it is gone either way
      }
    }
  }

  function wsError(cause) {
    const err = new Error("websocket error");
    err.description = cause;
    return err;
  }

  // ---------------------------------------------------------------------------------------------
  // EngineSocket: one Engine.IO connection.
  //
  // Fires "open" (handshake done), "message" (string or ArrayBuffer), "ping", "upgrade"
  // (transport) and, once, "close" (reason, error). readyState goes opening -> open -> closing
  // -> closed; "closing" flushes what is buffered, then the close packet.

  let cacheBuster = 0;

  class EngineSocket extends Emitter {
    constructor(uri, opts) {
      super();
      this.uri = uri; // { secure, host }
      this.opts = opts;
      this.id = null; // the session id, from the handshake
      this.readyState = "opening";
      this.writeBuffer = [];
      this.upgrading = false; // writes wait while the transport is being switched
      this.transport = null;
      this._probe = null; // the websocket being tried while we poll
      this._pingTimer = null;
    }

    open() {
      const name = this.opts.transports[0];
      const transport =
        name === "websocket" ? new WebSocketTransport(this._url(name)) : new Polling(this);
      this._setTransport(transport);
      this.transport.open();
    }

    /** The URL of a request: the engine path, the protocol query and the user's query. */
    _url(transport) {
      const query = new URLSearchParams(this.opts.query);
      query.set("EIO", "4");
      query.set("transport", transport);
      if (this.id) query.set("sid", this.id);
      // Some proxies and old browsers cache GETs; make every URL unique.
      if (transport === "polling") {
        query.set("t", Date.now().toString(36) + (cacheBuster++).toString(36));
      }
      const secure = this.uri.secure;
      const scheme = transport === "websocket" ? (secure ? "wss" : "ws") : secure ? "https" : "http";
      return scheme + "://" + this.uri.host + this.opts.path + "?" + query;
    }

    _setTransport(transport) {
      this.transport = transport;
      transport.on("packet", (packet) => this._onPacket(packet));
      transport.on("drain", () => this._onDrain());
      transport.on("close", (reason, err) => this._onClose(reason, err));
    }

    _onPacket(packet) {
      switch (packet.type) {
        case "open":
          return this._onHandshake(packet.data);
        case "ping":
          // Engine.IO v4: the server pings, we answer; silence means the connection is dead.
          this._resetPingTimer();
          this._write({ type: "pong" });
          return this._fire("ping");
        case "message":
          return this._fire("message", packet.data);
        case "close":
          return this._onClose("transport close", new Error("closed by the server"));
        // pong, upgrade and noop need nothing (noop ends a GET during an upgrade)
      }
    }

    _onHandshake(json) {
      if (this.readyState !== "opening") return;
      let handshake;
      try {
        handshake = JSON.parse(json);
      } catch (err) {
        handshake = null;
      }
      if (!handshake || typeof handshake.sid !== "string") {
        return this._onClose("parse error", new Error("invalid handshake: " + json));
      }
      this.id = handshake.sid;
      this.upgrades = handshake.upgrades || [];
      this.pingInterval = handshake.pingInterval;
      this.pingTimeout = handshake.pingTimeout;
      this.maxPayload = handshake.maxPayload || Infinity;
      this.readyState = "open";
      this._resetPingTimer();
      this._fire("open");
      this._flush();
      if (
        this.readyState === "open" &&
        this.transport.name === "polling" &&
        this.opts.transports.indexOf("websocket") >= 0 &&
        this.upgrades.indexOf("websocket") >= 0
      ) {
        this._startProbe();
      }
    }

    _resetPingTimer() {
      clearTimeout(this._pingTimer);
      this._pingTimer = setTimeout(
        () => this._onClose("ping timeout", new Error("no ping from the server")),
        this.pingInterval + this.pingTimeout
      );
    }

    /** Queues a message (a string or binary) for the server. */
    send(data) {
      this._write({ type: "message", data: data });
    }

    _write(packet) {
      if (this.readyState !== "opening" && this.readyState !== "open") return;
      this.writeBuffer.push(packet);
      this._flush();
    }

    _flush() {
      const state = this.readyState;
      if ((state !== "open" && state !== "closing") || this.upgrading) return;
      if (!this.transport.writable || !this.writeBuffer.length) return;
      this.transport.send(this._takeBatch());
    }

    /** What goes in the next write: everything, but a polling body stays within maxPayload. */
    _takeBatch() {
      if (this.transport.name !== "polling") return this.writeBuffer.splice(0);
      let size = 0;
      let n = 0;
      for (; n < this.writeBuffer.length; n++) {
        size += pollingLength(this.writeBuffer[n]) + (n > 0 ? 1 : 0);
        if (n > 0 && size > this.maxPayload) break;
      }
      return this.writeBuffer.splice(0, n);
    }

    _onDrain() {
      if (this.readyState === "closing" && !this.writeBuffer.length) {
        // The close packet is out: the server knows, nothing more to wait for.
        return this._onClose("forced close");
      }
      this._flush();
    }

    /**
     * Upgrade (DESIGN §4): open a websocket with our sid, send "2probe"; on "3probe" stop
     * polling once the requests in flight are done, send "5" and carry on over the websocket.
     * Any failure leaves the connection on polling.
     */
    _startProbe() {
      const ws = new WebSocketTransport(this._url("websocket"));
      this._probe = ws;
      const abandon = () => this._probe === ws && this._cancelProbe();
      ws.on("open", () => ws.send([{ type: "ping", data: "probe" }]));
      ws.on("packet", (packet) => {
        if (packet.type !== "pong" || packet.data !== "probe") return abandon();
        this.upgrading = true;
        this.transport.pause(() => {
          if (this._probe !== ws || this.readyState !== "open") return;
          this._probe = null;
          ws.off();
          ws.send([{ type: "upgrade" }]);
          const polling = this.transport;
          polling.off();
          polling.close();
          this._setTransport(ws);
          this.upgrading = false;
          this._fire("upgrade", ws);
          this._flush();
        });
      });
      ws.on("close", abandon);
      ws.open();
    }

    _cancelProbe() {
      const ws = this._probe;
      if (!ws) return;
      this._probe = null;
      ws.off();
      ws.close();
      if (this.upgrading) {
        this.upgrading = false;
        if (this.readyState === "open") {
          this.transport.resume();
          this._flush();
        }
      }
    }

    /** Says goodbye: what is buffered goes out, then the close packet, then the transport ends. */
    close() {
      if (this.readyState === "opening") return this._onClose("forced close");
      if (this.readyState !== "open") return;
      this.readyState = "closing";
      this._cancelProbe();
      this.writeBuffer.push({ type: "close" });
      this._flush();
    }

    _onClose(reason, err) {
      if (this.readyState === "closed") return;
      this.readyState = "closed";
      clearTimeout(this._pingTimer);
      this._cancelProbe();
      this.transport.off();
      this.transport.close();
      this.writeBuffer = [];
      this._fire("close", reason, err);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Socket.IO codec. A packet is { type, nsp, id?, data? }.

  const CONNECT = 0;
  const DISCONNECT = 1;
  const EVENT = 2;
  const ACK = 3;
  const CONNECT_ERROR = 4;
  const BINARY_EVENT = 5;
  const BINARY_ACK = 6;

  /** Events the library fires itself; emitting them to the server is a mistake. */
  const RESERVED_EVENTS = [
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
  ];

  function hasBinary(value) {
    if (!value || typeof value !== "object") return false;
    if (isBinary(value)) return true;
    if (Array.isArray(value)) return value.some(hasBinary);
    if (typeof value.toJSON === "function") return false; // a Date, say: JSON decides
    return Object.keys(value).some((key) => hasBinary(value[key]));
  }

  /** A copy of value with every buffer replaced by {_placeholder: true, num} (pushed to buffers). */
  function extractBinary(value, buffers) {
    if (isBinary(value)) {
      buffers.push(value);
      return { _placeholder: true, num: buffers.length - 1 };
    }
    if (Array.isArray(value)) return value.map((item) => extractBinary(item, buffers));
    if (value && typeof value === "object" && typeof value.toJSON !== "function") {
      const copy = {};
      for (const key of Object.keys(value)) copy[key] = extractBinary(value[key], buffers);
      return copy;
    }
    return value;
  }

  /** The Engine.IO messages of a packet: its text, then one binary message per attachment. */
  function encodeSocketPacket(packet) {
    let type = packet.type;
    let data = packet.data;
    const buffers = [];
    if ((type === EVENT || type === ACK) && hasBinary(data)) {
      data = extractBinary(data, buffers);
      type = type === EVENT ? BINARY_EVENT : BINARY_ACK;
    }
    let text = String(type);
    if (buffers.length) text += buffers.length + "-";
    if (packet.nsp !== "/") text += packet.nsp + ",";
    if (packet.id !== undefined) text += packet.id;
    if (data !== undefined) text += JSON.stringify(data);
    return [text].concat(buffers);
  }

  /** Parses the text of a packet; throws on anything the protocol does not allow. */
  function parseSocketPacket(text) {
    const type = text.charCodeAt(0) - 48;
    if (!(type >= CONNECT && type <= BINARY_ACK)) throw new Error("unknown packet type");
    let i = 1;
    let attachments = 0;
    if (type === BINARY_EVENT || type === BINARY_ACK) {
      const dash = text.indexOf("-", i);
      const count = text.slice(i, dash);
      if (dash < 0 || !/^\d+$/.test(count)) throw new Error("invalid attachment count");
      attachments = Number(count);
      i = dash + 1;
    }
    let nsp = "/";
    if (text.charAt(i) === "/") {
      const comma = text.indexOf(",", i);
      const end = comma < 0 ? text.length : comma;
      nsp = text.slice(i, end);
      i = end + 1;
    }
    const idStart = i;
    while (i < text.length && text.charCodeAt(i) >= 48 && text.charCodeAt(i) <= 57) i++;
    const id = i > idStart ? Number(text.slice(idStart, i)) : undefined;
    const data = i < text.length ? JSON.parse(text.slice(i)) : undefined;
    if (!validPayload(type, id, data)) throw new Error("invalid payload");
    return { type: type, nsp: nsp, id: id, data: data, attachments: attachments };
  }

  function validPayload(type, id, data) {
    const isObject = data !== null && typeof data === "object" && !Array.isArray(data);
    switch (type) {
      case CONNECT:
        return isObject;
      case DISCONNECT:
        return data === undefined;
      case CONNECT_ERROR:
        return isObject || typeof data === "string";
      case EVENT:
      case BINARY_EVENT:
        return (
          Array.isArray(data) &&
          (typeof data[0] === "number" ||
            (typeof data[0] === "string" && RESERVED_EVENTS.indexOf(data[0]) < 0))
        );
      default: // ACK, BINARY_ACK
        return id !== undefined && Array.isArray(data);
    }
  }

  function insertBinary(value, buffers) {
    if (Array.isArray(value)) return value.map((item) => insertBinary(item, buffers));
    if (value && typeof value === "object") {
      if (value._placeholder === true) {
        if (!(value.num >= 0 && value.num < buffers.length)) throw new Error("invalid placeholder");
        return buffers[value.num];
      }
      for (const key of Object.keys(value)) value[key] = insertBinary(value[key], buffers);
    }
    return value;
  }

  /** Reassembles packets from Engine.IO messages: a binary packet's attachments follow it. */
  class PacketDecoder {
    constructor() {
      this._partial = null; // a binary packet still waiting for attachments
    }

    /** A complete packet, or null while attachments are due. Throws on a protocol violation. */
    add(message) {
      if (typeof message === "string") {
        if (this._partial) throw new Error("a packet arrived before the last one's attachments");
        const packet = parseSocketPacket(message);
        if (!packet.attachments) return packet;
        packet.buffers = [];
        this._partial = packet;
        return null;
      }
      const packet = this._partial;
      if (!packet) throw new Error("an attachment arrived without a binary packet");
      const buffer = message instanceof ArrayBuffer ? message : bytesOf(message).slice().buffer;
      packet.buffers.push(buffer);
      if (packet.buffers.length < packet.attachments) return null;
      this._partial = null;
      packet.data = insertBinary(packet.data, packet.buffers);
      return packet;
    }

    reset() {
      this._partial = null;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Manager: one Engine.IO connection, the namespace sockets on it, and reconnection.
  //
  // Fires "open", "close" (reason), "error" (a failed connection attempt), "ping",
  // "reconnect_attempt" (n), "reconnect" (n), "reconnect_error" (error), "reconnect_failed".

  /**
   * Delays between connection attempts: reconnectionDelay doubled at each attempt, spread by
   * ±randomizationFactor so that clients dropped at the same moment do not all return at the
   * same moment, and never above reconnectionDelayMax.
   */
  class Backoff {
    constructor(opts) {
      this.min = opts.reconnectionDelay;
      this.max = opts.reconnectionDelayMax;
      this.jitter = opts.randomizationFactor;
      this.attempts = 0;
    }

    next() {
      const base = Math.min(this.max, this.min * Math.pow(2, this.attempts++));
      const spread = base * this.jitter * (Math.random() * 2 - 1);
      return Math.max(0, Math.min(this.max, Math.round(base + spread)));
    }

    reset() {
      this.attempts = 0;
    }
  }

  function option(value, fallback) {
    return value === undefined || value === null ? fallback : value;
  }

  /** "/socket.io" and "socket.io/" both mean "/socket.io/". */
  function normalizePath(path) {
    return ("/" + option(path, "/socket.io/") + "/").replace(/\/+/g, "/");
  }

  class Manager extends Emitter {
    /** uri: "http://host:port" or what parseUri returns. */
    constructor(uri, opts) {
      super();
      opts = opts || {};
      this.uri = typeof uri === "string" ? parseUri(uri) : uri; // { secure, host }
      this.opts = {
        path: normalizePath(opts.path),
        transports: option(opts.transports, ["polling", "websocket"]),
        query: opts.query,
        reconnection: opts.reconnection !== false,
        reconnectionAttempts: option(opts.reconnectionAttempts, Infinity),
        reconnectionDelay: option(opts.reconnectionDelay, 1000),
        reconnectionDelayMax: option(opts.reconnectionDelayMax, 5000),
        randomizationFactor: option(opts.randomizationFactor, 0.5),
        timeout: option(opts.timeout, 20000),
        withCredentials: !!opts.withCredentials,
        extraHeaders: opts.extraHeaders, // polling only: browsers and WebSocket cannot set headers
      };
      if (!this.opts.transports.length) throw new Error("io(): no transports");
      this.nsps = Object.create(null); // namespace -> Socket
      this.engine = null; // the live connection, null while closed
      this.readyState = "closed"; // closed | opening | open
      this.backoff = new Backoff(this.opts);
      this._decoder = new PacketDecoder();
      this._reconnecting = false; // an attempt is scheduled or running
      this._skipReconnect = false; // we closed on purpose: do not come back
      this._reconnectTimer = null;
      this._openTimer = null;
    }

    /** The socket of a namespace on this connection. */
    socket(nsp, opts) {
      let socket = this.nsps[nsp];
      if (!socket) {
        socket = new Socket(this, nsp, opts || {});
        this.nsps[nsp] = socket;
        if (socket._opts.autoConnect !== false) socket.connect();
      }
      return socket;
    }

    _activeSockets() {
      return Object.keys(this.nsps)
        .map((nsp) => this.nsps[nsp])
        .filter((socket) => socket._active);
    }

    /** Opens the connection, unless it is open or opening. */
    open() {
      if (this.readyState !== "closed") return this;
      this._skipReconnect = false;
      this.readyState = "opening";
      const engine = new EngineSocket(this.uri, this.opts);
      this.engine = engine;
      // Events of an engine we gave up on (timed out, closed) must not touch the current state.
      const current = () => this.engine === engine;
      engine.on("open", () => current() && this._onOpen());
      engine.on("ping", () => current() && this._fire("ping"));
      engine.on("message", (data) => current() && this._onMessage(data));
      engine.on("close", (reason, err) => current() && this._onClose(reason, err));
      if (this.opts.timeout !== false && isFinite(this.opts.timeout)) {
        this._openTimer = setTimeout(() => {
          if (current() && this.readyState === "opening") {
            this._abandon("timeout", new Error("timeout"));
          }
        }, this.opts.timeout);
      }
      engine.open();
      return this;
    }

    /** Forgets the engine first (so that its close goes unheard), then closes it. */
    _abandon(reason, err) {
      const engine = this.engine;
      this._onClose(reason, err);
      if (engine) engine.close();
    }

    _onOpen() {
      clearTimeout(this._openTimer);
      this.readyState = "open";
      this._decoder.reset();
      const attempts = this.backoff.attempts;
      const reconnected = this._reconnecting;
      this._reconnecting = false;
      this.backoff.reset();
      this._fire("open");
      if (reconnected) this._fire("reconnect", attempts);
      for (const socket of this._activeSockets()) socket._sendConnect();
    }

    _onMessage(data) {
      let packet;
      try {
        packet = this._decoder.add(data);
      } catch (err) {
        return this._abandon("parse error", err);
      }
      const socket = packet && this.nsps[packet.nsp];
      if (socket && socket._active) socket._onPacket(packet);
    }

    /** The connection ended, or an attempt to open it failed; reconnects unless told not to. */
    _onClose(reason, err) {
      clearTimeout(this._openTimer);
      const wasOpen = this.readyState === "open";
      this.engine = null;
      this.readyState = "closed";
      this._decoder.reset();
      if (wasOpen) {
        this._fire("close", reason, err);
        for (const socket of this._activeSockets()) socket._onClose(reason, err);
      } else {
        const error = err instanceof Error ? err : new Error(reason);
        this._fire("error", error);
        if (this._reconnecting) {
          this._reconnecting = false;
          this._fire("reconnect_error", error);
        }
        for (const socket of this._activeSockets()) socket._onConnectError(error);
      }
      this._reconnect();
    }

    _reconnect() {
      if (this._reconnecting || this._skipReconnect || !this.opts.reconnection) return;
      if (this.readyState !== "closed") return; // a listener already reopened
      if (this.backoff.attempts >= this.opts.reconnectionAttempts) {
        this.backoff.reset();
        return this._fire("reconnect_failed");
      }
      this._reconnecting = true;
      this._reconnectTimer = setTimeout(() => {
        this._reconnectTimer = null;
        if (this._skipReconnect || this.readyState !== "closed") {
          this._reconnecting = false;
          return;
        }
        this._fire("reconnect_attempt", this.backoff.attempts);
        this.open(); // _reconnecting stays set until it succeeds or fails
      }, this.backoff.next());
    }

    /** A socket left: with no namespace in use, the connection has no reason to live. */
    _destroy() {
      if (!this._activeSockets().length) this._close();
    }

    _close() {
      this._skipReconnect = true;
      this._reconnecting = false;
      clearTimeout(this._reconnectTimer);
      clearTimeout(this._openTimer);
      this.backoff.reset();
      const engine = this.engine;
      const wasOpen = this.readyState === "open";
      this.engine = null;
      this.readyState = "closed";
      this._decoder.reset();
      if (engine) engine.close(); // flushes what the sockets said last (their DISCONNECT)
      if (wasOpen) this._fire("close", "forced close");
    }

    _sendPacket(packet) {
      if (!this.engine) return;
      for (const message of encodeSocketPacket(packet)) this.engine.send(message);
    }
  }

  // ---------------------------------------------------------------------------------------------
  // Socket: one namespace on a Manager's connection.

  class Socket extends Emitter {
    constructor(manager, nsp, opts) {
      super();
      this.io = manager;
      this.nsp = nsp;
      this.id = undefined; // the server's id for this socket, while connected
      this.connected = false;
      this.auth = opts.auth; // an object, or a function (cb) => cb(object), sent with CONNECT
      this._opts = opts;
      this._active = false; // wants to be connected: reconnects with the manager
      this._ids = 0; // ack ids
      this._acks = new Map(); // id -> { answer(args), fail(error) }
      this._sendBuffer = []; // emits made while disconnected, sent on connect
      this._receiveBuffer = []; // events that arrived before our CONNECT reply (a recovery's replay)
      this._flags = {}; // timeout / volatile, for the next emit only
      // Connection-state recovery: the private id the server gave this socket, and the offset of
      // the last event received; sent back on reconnection so that a server that kept the
      // socket gives it back with the events missed meanwhile.
      this._pid = undefined;
      this._lastOffset = undefined;
      this.recovered = false; // this connection got the previous one's socket back
    }

    get disconnected() {
      return !this.connected;
    }

    get active() {
      return this._active;
    }

    /** Connects (again); reconnects automatically from then on until disconnect(). */
    connect() {
      if (this.connected) return this;
      const wasActive = this._active;
      this._active = true;
      if (this.io.readyState === "open") {
        if (!wasActive) this._sendConnect();
      } else if (this.io.readyState === "closed" && !this.io._reconnecting) {
        this.io.open(); // sends our CONNECT once open
      }
      return this;
    }

    open() {
      return this.connect();
    }

    /** Leaves the namespace for good (no reconnection): "disconnect" with "io client disconnect". */
    disconnect() {
      if (this.connected || (this._active && this.io.readyState === "open")) {
        this._packet({ type: DISCONNECT });
      }
      this._destroy();
      if (this.connected) this._onClose("io client disconnect");
      return this;
    }

    close() {
      return this.disconnect();
    }

    /** emit(event, ...args, ack?): sent now if connected, else buffered until connected. */
    emit(event, ...args) {
      if (RESERVED_EVENTS.indexOf(event) >= 0) {
        throw new Error('"' + event + '" is a reserved event name');
      }
      const flags = this._flags;
      this._flags = {};
      const packet = { type: EVENT, data: [event].concat(args) };
      if (typeof args[args.length - 1] === "function") {
        const callback = packet.data.pop();
        packet.id = this._ids++;
        this._registerAck(packet.id, callback, flags.timeout);
      }
      if (this.connected) this._packet(packet);
      else if (!flags.volatile) this._sendBuffer.push(packet);
      return this;
    }

    send(...args) {
      return this.emit("message", ...args);
    }

    /** The next emit's ack callback gets (err, ...args); err when no answer came within ms. */
    timeout(ms) {
      this._flags.timeout = ms;
      return this;
    }

    /** The next emit is dropped rather than buffered if we are not connected. */
    get volatile() {
      this._flags.volatile = true;
      return this;
    }

    /** emit with an ack, as a promise of the ack's first argument. */
    emitWithAck(event, ...args) {
      const withError = this._flags.timeout !== undefined;
      return new Promise((resolve, reject) => {
        const callback = withError ? (err, value) => (err ? reject(err) : resolve(value)) : resolve;
        this.emit(event, ...args, callback);
      });
    }

    _registerAck(id, callback, timeout) {
      if (timeout === undefined) {
        this._acks.set(id, { answer: (args) => callback.apply(this, args), fail: null });
        return;
      }
      const timer = setTimeout(() => {
        this._acks.delete(id);
        this._sendBuffer = this._sendBuffer.filter((packet) => packet.id !== id);
        callback.call(this, new Error("operation has timed out"));
      }, timeout);
      this._acks.set(id, {
        answer: (args) => {
          clearTimeout(timer);
          callback.apply(this, [null].concat(args));
        },
        fail: (err) => {
          clearTimeout(timer);
          callback.call(this, err);
        },
      });
    }

    _packet(packet) {
      packet.nsp = this.nsp;
      this.io._sendPacket(packet);
    }

    _sendConnect() {
      // The application's own auth keys win over ours.
      const withRecovery = (data) =>
        this._pid ? Object.assign({ pid: this._pid, offset: this._lastOffset }, data) : data;
      if (typeof this.auth === "function") {
        this.auth((data) => this._packet({ type: CONNECT, data: withRecovery(data) }));
      } else {
        this._packet({ type: CONNECT, data: withRecovery(this.auth) });
      }
    }

    _onPacket(packet) {
      switch (packet.type) {
        case CONNECT:
          return this._onConnect(packet.data);
        case EVENT:
        case BINARY_EVENT:
          if (this.connected) this._onEvent(packet);
          // A recovering server replays what we missed before its CONNECT reply.
          else if (this._active) this._receiveBuffer.push(packet);
          return;
        case ACK:
        case BINARY_ACK: {
          const ack = this._acks.get(packet.id);
          if (!ack) return;
          this._acks.delete(packet.id);
          return ack.answer(packet.data);
        }
        case DISCONNECT:
          // The server removed us from the namespace: do not come back on our own.
          this._destroy();
          return this._onClose("io server disconnect");
        case CONNECT_ERROR: {
          // Refused by the namespace (middleware): a retry is the application's decision.
          this._destroy();
          const data = packet.data;
          const err = new Error(typeof data === "string" ? data : data.message);
          err.data = typeof data === "string" ? undefined : data.data;
          return this._fire("connect_error", err);
        }
      }
    }

    _onConnect(data) {
      if (this.connected) return;
      this.id = data.sid;
      this.recovered = Boolean(data.pid) && data.pid === this._pid;
      this._pid = data.pid;
      this.connected = true;
      const received = this._receiveBuffer;
      this._receiveBuffer = [];
      // A replay that came with a fresh socket is not ours.
      if (this.recovered) for (const packet of received) this._onEvent(packet);
      const buffered = this._sendBuffer;
      this._sendBuffer = [];
      for (const packet of buffered) this._packet(packet);
      this._fire("connect");
    }

    _onEvent(packet) {
      const args = packet.data.slice();
      args[0] = String(args[0]);
      if (packet.id !== undefined) args.push(this._ackSender(packet.id));
      this._fire.apply(this, args);
      // With recovery on, the server's events end with their offset (acks carry none).
      const last = args[args.length - 1];
      if (this._pid && packet.id === undefined && args.length > 1 && typeof last === "string") {
        this._lastOffset = last;
      }
    }

    /** The callback handed to a listener when the server asked for an ack; answers once. */
    _ackSender(id) {
      let sent = false;
      return (...args) => {
        if (sent) return;
        sent = true;
        this._packet({ type: ACK, id: id, data: args });
      };
    }

    _onConnectError(err) {
      if (!this.connected) this._fire("connect_error", err);
    }

    _onClose(reason, description) {
      const wasConnected = this.connected;
      this.connected = false;
      this.id = undefined;
      this._receiveBuffer = [];
      // The server forgot the acks it was asked for; those of emits still buffered stay.
      for (const entry of Array.from(this._acks)) {
        const id = entry[0];
        if (this._sendBuffer.some((packet) => packet.id === id)) continue;
        this._acks.delete(id);
        if (entry[1].fail) entry[1].fail(new Error("socket has been disconnected"));
      }
      if (wasConnected) this._fire("disconnect", reason, description);
    }

    _destroy() {
      if (!this._active) return;
      this._active = false;
      this.io._destroy();
    }
  }

  // ---------------------------------------------------------------------------------------------
  // io(): the entry point.

  /** Where to connect: io("/chat") is this page's origin; io("http://host:port/nsp") anywhere. */
  function parseUri(uri) {
    const here = typeof location !== "undefined" && location && location.host ? location : null;
    const scheme = here ? here.protocol : "https:";
    if (uri === undefined || uri === null || uri === "") uri = "/";
    if (uri.indexOf("//") === 0) uri = scheme + uri;
    else if (uri.charAt(0) === "/") {
      if (!here) {
        throw new Error("io(" + JSON.stringify(uri) + "): outside a browser, give a full URL");
      }
      uri = here.protocol + "//" + here.host + uri;
    } else if (!/^[a-z][a-z0-9+.-]*:\/\//i.test(uri)) uri = scheme + "//" + uri;
    const url = new URL(uri);
    const secure = url.protocol === "https:" || url.protocol === "wss:";
    return {
      secure: secure,
      host: url.host,
      origin: (secure ? "https://" : "http://") + url.host,
      nsp: url.pathname || "/",
      query: url.search.slice(1),
    };
  }

  const managers = Object.create(null); // origin + path -> the Manager io() calls share

  /**
   * io(url?, opts?) -> Socket. Calls for other namespaces of the same origin and path share one
   * connection; a namespace already in use there, opts.forceNew or opts.multiplex === false get
   * a connection of their own.
   */
  function io(uri, opts) {
    if (uri && typeof uri === "object") {
      opts = uri;
      uri = undefined;
    }
    opts = Object.assign({}, opts);
    const target = parseUri(uri);
    if (target.query) {
      const query = new URLSearchParams(target.query);
      const extra = new URLSearchParams(opts.query || "");
      extra.forEach((value, key) => query.set(key, value));
      opts.query = query.toString();
    }
    const shared = !opts.forceNew && opts.multiplex !== false;
    const key = target.origin + normalizePath(opts.path);
    let manager = shared ? managers[key] : undefined;
    if (!manager || manager.nsps[target.nsp]) {
      manager = new Manager(target, opts);
      if (shared) managers[key] = manager;
    }
    return manager.socket(target.nsp, opts);
  }

  io.connect = io;
  io.Manager = Manager;
  io.Socket = Socket;
  io.protocol = 5;

  root.io = io;
  if (typeof module === "object" && module && typeof module.exports === "object") {
    module.exports = io;
  }
})(typeof globalThis !== "undefined" ? globalThis : typeof window !== "undefined" ? window : this);
