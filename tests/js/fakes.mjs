// Test doubles for the page's core: a clock whose timers run only when told, and a
// WebSocket that records what the page sends and delivers what the test says.

import { ChatCore } from '../../static/core/client.js';

export class FakeClock {
  constructor(start = 1000) {
    this.t = start;
    this.timers = new Map();
    this.seq = 0;
    this.now = () => this.t;
    this.setTimeout = (fn, ms) => {
      const id = ++this.seq;
      this.timers.set(id, { at: this.t + Math.max(0, ms), fn, id });
      return id;
    };
    this.clearTimeout = (id) => { this.timers.delete(id); };
  }

  /** Move time forward by `ms`, running every timer that falls due, in order. */
  advance(ms) {
    const end = this.t + ms;
    for (;;) {
      let next = null;
      for (const timer of this.timers.values()) {
        if (timer.at <= end && (!next || timer.at < next.at || (timer.at === next.at && timer.id < next.id))) {
          next = timer;
        }
      }
      if (!next) break;
      this.timers.delete(next.id);
      this.t = next.at;
      next.fn();
    }
    this.t = end;
  }
}

export class FakeSocket {
  constructor() {
    this.readyState = 0;
    this.bufferedAmount = 0;
    this.sent = [];
    this.closed = false;
  }

  send(data) { this.sent.push(JSON.parse(data)); }
  close() { this.closed = true; this.readyState = 3; }

  /** The server accepts the upgrade. */
  open() {
    this.readyState = 1;
    this.onopen?.();
  }

  /** A frame from the server. */
  receive(frame) { this.onmessage?.({ data: JSON.stringify(frame) }); }

  /** The server closes the connection with `code`. */
  serverClose(code) {
    this.readyState = 3;
    this.onclose?.({ code });
  }

  /** Frames sent of this type, and forget them. */
  take(type) {
    const out = this.sent.filter((f) => f.type === type);
    this.sent = this.sent.filter((f) => f.type !== type);
    return out;
  }
}

export const WELCOME = Object.freeze({
  type: 'welcome', version: 1, session: 's1', nick: 'alice', rooms: [],
  heartbeat: { interval: 10, timeout: 30 },
  limits: {
    text: 2000, frame: 16384, rooms: 20, rate: { messages: 5, per: 1, burst: 10 },
    join_rate: { messages: 5, per: 1, burst: 40 },
  },
});

/**
 * A core with a fake clock and sockets, and every callback it makes recorded in
 * `events` as [name, ...args]. `random` answers 0.5 unless told otherwise.
 */
export function makeCore({ random = () => 0.5, ...options } = {}) {
  const clock = new FakeClock();
  const sockets = [];
  const events = [];
  let cids = 0;
  const ui = new Proxy({}, {
    get: (_, name) => (...args) => events.push([name, ...args]),
  });
  const core = new ChatCore({
    env: {
      now: clock.now,
      setTimeout: clock.setTimeout,
      clearTimeout: clock.clearTimeout,
      random,
      openSocket: () => {
        const ws = new FakeSocket();
        sockets.push(ws);
        return ws;
      },
      newCid: () => `c${++cids}`,
    },
    ui,
    nick: 'alice',
    ...options,
  });
  const socket = () => sockets[sockets.length - 1];
  const named = (name) => events.filter((e) => e[0] === name);
  return { core, clock, sockets, socket, events, named };
}

/** Start the core and bring it to `ready` with `welcome` (fields merged over WELCOME). */
export function welcomed(t, rooms = ['lobby'], welcome = {}) {
  for (const name of rooms) t.core.addRoom(name);
  t.core.start();
  const ws = t.socket();
  ws.open();
  ws.receive({ ...WELCOME, ...welcome });
  return ws;
}

/** Answer every `join` sent so far with `joined` (no messages, epoch e1). */
export function answerJoins(ws, epoch = 'e1') {
  for (const join of ws.take('join')) {
    ws.receive({ type: 'joined', room: join.room, epoch, members: ['alice'], messages: [], complete: true });
  }
}
