// The page's connection to the chat service (contract sections 3 to 5), without the
// DOM: one WebSocket at a time, the heartbeat and the dead-server timer, reconnecting
// with back-off, resuming the session, the rooms and the unacknowledged messages.
//
// Everything outside comes in through `env` (clock, timers, randomness, the socket
// factory, cids), so node tests drive it with a fake clock and a fake socket. What the
// person should see goes out through `ui`, an object of optional callbacks (view.js).
//
// phase:
//   connecting  socket opening, or `hello` sent and no `welcome` yet
//   open        socket up, waiting for the person to pick a (new) nick or token
//   ready       welcomed
//   waiting     back-off timer running before the next attempt; healthz probed meanwhile
//   parked      not trying on our own (replaced by another tab, unauthorised)

import { afterClose, afterProbeDelay, backoffDelay, probeDelay, restartDelay } from './backoff.js';
import { DEFAULT_HEARTBEAT, readHeartbeat, tickPeriod, watch } from './heartbeat.js';
import { JoinPacer } from './joins.js';
import { sameNick } from './nick.js';
import { Outbox, RESEND_GAP, RETRYABLE, retryAfter } from './outbox.js';
import { Room } from './room.js';

const OPEN = 1; // WebSocket.OPEN
const STUCK_HOLD = 3000; // ms "server not responding" stays up at least, so people can read it
// ms: the server relays at most one `typing` a second; a little more, so that jitter on
// the way does not make the server drop one as too soon.
export const TYPING_SEND_GAP = 1100;
const MAX_ATTEMPT = 16;
const HELLO_ERRORS = new Set(['nick_invalid', 'nick_taken', 'unauthorized']);

export class ChatCore {
  constructor({ env, ui = {}, tokenMode = false, maxText = 2000, session = null, nick = null,
    token = null, offline = false }) {
    this.env = env;
    this.ui = ui;
    this.tokenMode = tokenMode;
    this.maxText = maxText;
    this.nick = nick;         // nick to send in `hello` (as typed, NFKC)
    this.token = token;       // token mode: the token `hello` carries
    this.me = null;           // nick the server knows us by (from `welcome`)
    this.session = session;
    this.rooms = new Map();   // name -> Room, in the order joined
    this.outbox = new Outbox();
    this.ws = null;
    this.phase = 'waiting';
    this.welcomed = false;
    this.nickRejected = false; // the last `hello` failed: wait for the person before another
    this.heartbeat = { ...DEFAULT_HEARTBEAT };
    this.lastFrameAt = 0;
    this.lastTickAt = 0;
    this.period = tickPeriod(this.heartbeat);
    this.rtt = null;
    this.attempt = 0;
    this.retryAt = 0;
    this.stuckUntil = 0;       // show "server not responding" until then
    this.unavailableUntil = 0; // the server cannot reach its store; we retry at this time
    this.offline = offline;
    this.joins = null;         // JoinPacer of the welcomed connection
    this.historySent = [];     // rooms of `history` requests waiting for their answer
    this.lastTypingAt = -Infinity;
    this.timers = new Map();   // name -> timer id
    this.parkReason = null;    // 'replaced' or 'unauthorized' while parked
    // A probe that finds the server up may cut the back-off short (see onProbe).
    this.probeArmed = true;
    this.attemptFromProbe = false;
    this.probeSeq = 0;         // answers of probes older than the current wait are ignored
  }

  now() { return this.env.now(); }

  emit(name, ...args) {
    if (typeof this.ui[name] === 'function') this.ui[name](...args);
  }

  // ------------------------------------------------------------------ timers

  later(name, ms, fn) {
    this.cancel(name);
    this.timers.set(name, this.env.setTimeout(() => {
      this.timers.delete(name);
      fn();
    }, Math.max(0, ms)));
  }

  cancel(name) {
    if (this.timers.has(name)) {
      this.env.clearTimeout(this.timers.get(name));
      this.timers.delete(name);
    }
  }

  // ------------------------------------------------------------------ status

  /**
   * What the status line says. `text` names the state only: it goes into a live region,
   * and a screen reader must hear it when the state changes, not every second or after
   * every pong. `detail` (a countdown, the round trip) is shown beside it, outside the
   * live region. `reconnect`: whether "Reconnect now" is offered.
   */
  status() {
    const now = this.now();
    const tokenRefused = this.phase === 'parked' && this.parkReason === 'unauthorized';
    // A refused token is not made valid by trying again: the person needs a new one.
    const reconnect = !tokenRefused && (this.phase === 'waiting' || this.phase === 'parked'
      || (this.phase === 'connecting' && this.comingBack()));
    const unavailable = now < this.unavailableUntil
      && (this.phase === 'ready' || this.phase === 'connecting');
    const [text, detail] = this.statusText(now, unavailable, tokenRefused);
    return {
      text,
      detail,
      reconnect,
      trouble: now < this.stuckUntil || reconnect || unavailable || tokenRefused,
      phase: this.phase,
    };
  }

  statusText(now, unavailable, tokenRefused) {
    const seconds = (at) => `in ${Math.max(1, Math.ceil((at - now) / 1000))} s`;
    if (this.offline) return ['offline', ''];
    // Shown for a few seconds even if the reconnect is quicker, so the hiccup can be read.
    if (now < this.stuckUntil) return ['server not responding', ''];
    if (unavailable) return ['server unavailable, retrying', seconds(this.unavailableUntil)];
    switch (this.phase) {
      case 'ready':
        return ['connected', this.rtt == null ? '' : `RTT ${Math.round(this.rtt)} ms`];
      case 'open':
        // The socket is up but no `welcome`: nobody is signed in yet.
        return ['signed out', ''];
      case 'connecting':
        // One word for the attempt and the wait between attempts, so that the live
        // region does not speak at every try.
        return this.comingBack() ? ['reconnecting', 'now…'] : ['connecting…', ''];
      case 'waiting':
        return ['reconnecting', seconds(this.retryAt)];
      case 'parked':
        return tokenRefused ? ['signed out: token refused', ''] : ['disconnected', ''];
      default:
        return ['offline', ''];
    }
  }

  // A page that was connected before is getting back, not signing in for the first time.
  comingBack() { return this.welcomed || this.attempt > 0; }

  // ------------------------------------------------------------------ connection

  start() {
    this.startTicker();
    this.connect();
  }

  connect(fromProbe = false) {
    this.cancel('retry');
    this.cancel('probe');
    this.probeSeq += 1;
    this.attemptFromProbe = fromProbe;
    this.parkReason = null;
    this.dropSocket();
    let ws;
    try {
      ws = this.env.openSocket();
    } catch (err) {
      this.env.log?.(err);
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    this.phase = 'connecting';
    this.heartbeat = { ...DEFAULT_HEARTBEAT }; // the connect attempt gets the default 30 s
    this.lastFrameAt = this.now();
    ws.onopen = () => {
      this.lastFrameAt = this.now();
      this.startPinging(); // also before `welcome`, so a page waiting for a nick is not dropped
      this.sayHello();
      this.emit('status');
    };
    ws.onmessage = (ev) => {
      this.lastFrameAt = this.now(); // any frame proves the server is alive
      this.handleFrame(ev.data);
    };
    ws.onclose = (ev) => this.onClose(ev.code);
    ws.onerror = () => { /* a close event follows */ };
    this.emit('status');
  }

  send(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== OPEN) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  // Forget the current socket at once: handlers detached, close() not awaited, so a dead
  // server cannot keep us waiting. Per-connection state goes with it.
  dropSocket() {
    const ws = this.ws;
    if (!ws) return;
    this.ws = null;
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try { ws.close(); } catch { /* already closing */ }
    for (const name of [...this.timers.keys()]) {
      if (name !== 'tick' && name !== 'retry' && name !== 'probe') this.cancel(name);
    }
    this.rtt = null;
    this.joins = null;
    this.historySent = [];
    this.unavailableUntil = 0;
    for (const room of this.rooms.values()) {
      room.joinedHere = false;
      room.loadingOlder = false;
    }
    this.outbox.connectionLost();
    this.emit('dropped');
  }

  scheduleReconnect(delayMs) {
    this.cancel('retry');
    if (delayMs == null) {
      delayMs = backoffDelay(this.attempt, this.env.random);
      this.attempt = Math.min(this.attempt + 1, MAX_ATTEMPT);
    }
    this.phase = 'waiting';
    this.retryAt = this.now() + delayMs;
    this.later('retry', delayMs, () => this.connect());
    // An attempt that a probe started and that failed anyway: the probe's "up" says
    // nothing about the socket (a proxy that drops upgrades, say), so only an "up"
    // after a failed probe (the server went and came back) may cut the wait short.
    this.probeArmed = !this.attemptFromProbe;
    this.scheduleProbe();
    this.emit('status');
  }

  // While waiting, ask the server's healthz now and then (cheap, no session, no
  // upgrade): a restarted server is found within about PROBE_EVERY, however wide the
  // back-off window has grown. The back-off still spaces the real attempts out.
  scheduleProbe() {
    this.cancel('probe');
    if (!this.env.probe || this.phase !== 'waiting') return;
    const wait = probeDelay(this.env.random);
    if (this.retryAt - this.now() <= wait) return; // the attempt itself comes first
    const seq = this.probeSeq;
    this.later('probe', wait, () => {
      if (this.offline) {
        this.scheduleProbe();
        return;
      }
      this.env.probe((ok) => this.onProbe(seq, ok));
    });
  }

  onProbe(seq, ok) {
    if (seq !== this.probeSeq || this.phase !== 'waiting') return; // a stale answer
    if (ok && this.probeArmed) {
      this.cancel('retry');
      this.retryAt = this.now() + afterProbeDelay(this.env.random);
      this.later('retry', this.retryAt - this.now(), () => this.connect(true));
      this.emit('status');
      return;
    }
    if (!ok) this.probeArmed = true;
    this.scheduleProbe();
  }

  park(reason) {
    this.dropSocket();
    this.cancel('retry');
    this.cancel('probe');
    this.phase = 'parked';
    this.parkReason = reason;
    this.emit('parked', reason);
    this.emit('status');
  }

  onClose(code) {
    this.dropSocket();
    switch (afterClose(code)) {
      case 'park':
        if (code === 4003) this.tokenRefused();
        this.park(code === 4003 ? 'unauthorized' : 'replaced');
        break;
      case 'soon':
        this.scheduleReconnect(restartDelay(this.env.random));
        break;
      default:
        this.scheduleReconnect();
    }
  }

  /** The person asked to reconnect now (or the browser is back online). */
  reconnectNow() {
    this.stuckUntil = 0;
    this.connect();
  }

  // Nothing arrived for too long: the server (or the path to it) is dead.
  serverUnresponsive() {
    this.stuckUntil = this.now() + STUCK_HOLD;
    this.dropSocket();
    this.scheduleReconnect();
  }

  // Whether `hello` has what it needs: a token in token mode, else a nick.
  canSayHello() { return Boolean(this.tokenMode ? this.token : this.nick); }

  sayHello() {
    if (!this.canSayHello() || this.nickRejected) {
      this.phase = 'open';
      return;
    }
    // In token mode the token's subject is the nick: sending a remembered nick as well
    // could only make the server refuse a valid token.
    const hello = this.tokenMode ? { type: 'hello', token: this.token } : { type: 'hello', nick: this.nick };
    if (this.session) hello.session = this.session;
    if (this.send(hello)) this.phase = 'connecting';
  }

  // ------------------------------------------------------------------ heartbeat

  sendPing() {
    const ws = this.ws;
    // A non-empty send buffer means the link is not draining; piling pings on it helps nobody.
    if (!ws || ws.readyState !== OPEN || ws.bufferedAmount) return;
    this.send({ type: 'ping', t: this.now() });
  }

  startPinging() {
    const every = this.heartbeat.interval * 1000;
    const beat = () => {
      this.sendPing();
      this.later('ping', every, beat);
    };
    this.later('ping', every, beat);
  }

  // One timer drives the watchdog and the status countdown.
  startTicker() {
    this.period = tickPeriod(this.heartbeat);
    this.lastTickAt = this.now();
    const tick = () => {
      this.tick();
      this.later('tick', this.period, tick);
    };
    this.later('tick', this.period, tick);
  }

  tick() {
    const now = this.now();
    const { verdict, lastFrameAt } = watch({
      now, lastTickAt: this.lastTickAt, period: this.period,
      lastFrameAt: this.lastFrameAt, heartbeat: this.heartbeat,
    });
    this.lastTickAt = now;
    if (this.ws) {
      this.lastFrameAt = lastFrameAt;
      if (verdict === 'asleep') this.sendPing();
      else if (verdict === 'dead') this.serverUnresponsive();
    }
    this.emit('status');
  }

  // Tab visible again, or network back: check the link now rather than at the next tick.
  wake() {
    if (this.phase === 'ready' || this.phase === 'open') this.sendPing();
    else if (this.phase === 'waiting') this.connect();
    this.emit('status');
  }

  setOffline(offline) {
    this.offline = offline;
    if (offline) this.emit('status');
    else this.wake();
  }

  /** New heartbeat values (`welcome` or `settings`): used from now on, timers included. */
  useHeartbeat(hb) {
    const read = readHeartbeat(hb);
    if (!read) return;
    this.heartbeat = read;
    this.startPinging();
    this.startTicker();
  }

  /** New limits (`welcome` or `settings`). */
  useLimits(limits, now) {
    if (!limits || typeof limits !== 'object') return;
    if (limits.text > 0 && limits.text !== this.maxText) {
      this.maxText = limits.text;
      this.emit('limits', { text: this.maxText });
    }
    if (this.joins && limits.join_rate) this.joins.bucket.retune(limits.join_rate, now);
  }

  // ------------------------------------------------------------------ frames in

  handleFrame(data) {
    if (typeof data !== 'string') return;
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // the legacy heartbeat "~h#c~" and anything else not JSON
    }
    if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
    const handler = HANDLERS[frame.type];
    if (!handler) return; // unknown types are ignored
    try {
      handler.call(this, frame);
    } catch (err) {
      this.env.log?.('while handling', frame.type, err);
    }
  }

  onWelcome(f) {
    const now = this.now();
    this.phase = 'ready';
    this.attempt = 0;
    this.attemptFromProbe = false;
    this.session = f.session;
    this.welcomed = true;
    this.me = f.nick;
    this.unavailableUntil = 0;
    this.cancel('hello');
    this.emit('welcomed', f);
    this.joins = new JoinPacer(f.limits && f.limits.join_rate, now);
    this.useLimits(f.limits, now);
    this.useHeartbeat(f.heartbeat);
    this.sendPing(); // an RTT right away
    // Rooms the session still holds but the person left while we were away.
    for (const name of f.rooms || []) if (!this.rooms.has(name)) this.joins.leave(name);
    for (const room of this.rooms.values()) this.joins.join(room.name);
    this.pumpJoins();
    this.emit('status');
  }

  onSettings(f) {
    this.useHeartbeat(f.heartbeat);
    this.useLimits(f.limits, this.now());
    this.emit('status');
  }

  onJoined(f) {
    this.joins?.answered('join', f.room);
    this.recovered();
    const room = this.rooms.get(f.room);
    if (!room) return; // left meanwhile; our `leave` is on its way
    const { reset, gap } = room.onJoined(f);
    const items = [];
    for (const m of f.messages || []) {
      const item = this.receive(room, m);
      if (item) items.push(item);
    }
    room.replayed();
    this.emit('joined', room, { reset, gap, items });
    this.pump();
  }

  onLeft(f) {
    this.joins?.answered('leave', f.room);
    this.recovered();
    // Usually removed already when the person clicked; covers a leave from elsewhere.
    if (this.rooms.has(f.room)) this.removeRoom(f.room);
  }

  onMessage(f) {
    const room = this.rooms.get(f.room);
    if (!room) return;
    const item = this.receive(room, f);
    if (item) this.emit('message', room, item);
  }

  /**
   * A message frame, unless its id is held already: {message, entry}, where `entry` is
   * our own pending message that it settles (it came back, live or replayed).
   */
  receive(room, m) {
    if (!m || typeof m.id !== 'number' || room.ids.has(m.id)) return null;
    const entry = typeof m.cid === 'string' ? this.outbox.get(m.cid) : null;
    room.accept(m.id);
    if (entry && entry.room === room.name && sameNick(m.nick, this.me)) {
      this.outbox.delete(entry.cid);
      this.emit('outboxChanged');
      return { message: m, entry };
    }
    return { message: m, entry: null };
  }

  onAck(f) {
    this.recovered();
    const entry = this.outbox.get(f.cid);
    if (!entry) return; // the `message` came first and settled it already
    this.outbox.delete(entry.cid);
    this.emit('outboxChanged');
    const room = this.rooms.get(entry.room);
    if (room) {
      const fresh = room.accept(f.id); // false: on screen already (replayed by `joined`)
      this.emit('settled', room, entry, f, fresh);
    }
    this.pump();
  }

  onPresence(f) {
    const room = this.rooms.get(f.room);
    if (room && room.presence(f)) this.emit('presence', room, f);
  }

  onTyping(f) {
    const room = this.rooms.get(f.room);
    if (!room || typeof f.nick !== 'string' || sameNick(f.nick, this.me)) return;
    this.emit('typing', room, f.nick);
  }

  onHistory(f) {
    this.historyAnswered(f.room);
    this.recovered();
    const room = this.rooms.get(f.room);
    if (!room) return;
    const items = [];
    for (const m of f.messages || []) {
      const item = this.receive(room, m);
      if (item) items.push(item);
    }
    room.paged(f);
    this.emit('history', room, items);
  }

  onPong(f) {
    if (typeof f.t !== 'number') return;
    const rtt = this.now() - f.t;
    if (rtt >= 0) this.rtt = rtt;
    this.emit('status');
  }

  onError(f) {
    const retry = RETRYABLE.has(f.code);
    const wait = retryAfter(f);
    if (f.code === 'unavailable') {
      this.unavailableUntil = Math.max(this.unavailableUntil, this.now() + wait);
      this.emit('status');
    }
    if (typeof f.ref === 'string' && this.outbox.has(f.ref)) {
      this.sayRefused(this.outbox.get(f.ref), f, retry, wait);
      return;
    }
    switch (f.ref) {
      case 'hello':
        if (f.code === 'unavailable') this.later('hello', wait, () => this.sayHello());
        else this.helloFailed(f);
        return;
      case 'join':
        this.joinFailed(f, retry, wait);
        return;
      case 'leave':
        this.leaveFailed(retry, wait);
        return;
      case 'history':
        this.historyFailed(f, retry, wait);
        return;
      case 'typing': // best effort; a lost one does not matter
      case 'ping':
        return;
    }
    if (HELLO_ERRORS.has(f.code)) {
      this.helloFailed(f);
      return;
    }
    if (retry) return; // shown in the status line; the request it answers is retried
    this.emit('notice', f);
  }

  // A request went through: the server reaches its store again.
  recovered() {
    if (this.unavailableUntil) {
      this.unavailableUntil = 0;
      this.emit('status');
    }
  }

  helloFailed(f) {
    if (f.code === 'bad_request' && this.phase === 'ready') return; // a stray second hello
    this.nickRejected = true;
    this.phase = 'open';
    if (f.code === 'unauthorized') this.tokenRefused();
    this.emit('helloRefused', f);
    this.emit('status');
  }

  // A refused token is not tried again, on a reconnect or after a reload.
  tokenRefused() {
    if (!this.tokenMode) return;
    this.token = null;
    this.emit('tokenRefused');
  }

  joinFailed(f, retry, wait) {
    const name = this.joins?.answered('join', null);
    if (name && this.rooms.has(name) && retry) {
      this.joins.retry('join', name, wait, this.now());
      this.pumpJoins();
      return;
    }
    if (!name || !this.rooms.has(name)) {
      this.emit('notice', f);
      return;
    }
    this.emit('joinRefused', name, f);
    this.removeRoom(name);
  }

  leaveFailed(retry, wait) {
    const name = this.joins?.answered('leave', null);
    // Still not wanted: ask again. A refusal for good means nothing to the person.
    if (name && retry && !this.rooms.has(name)) {
      this.joins.retry('leave', name, wait, this.now());
      this.pumpJoins();
    }
  }

  // Answers come in request order: an error answering `history` is for the oldest one.
  historyAnswered(name) {
    const at = name == null ? 0 : this.historySent.indexOf(name);
    if (at < 0 || !this.historySent.length) return null;
    return this.historySent.splice(at, 1)[0];
  }

  historyFailed(f, retry, wait) {
    const name = this.historyAnswered(null);
    const room = name == null ? null : this.rooms.get(name);
    if (!room) return;
    if (retry) {
      this.later(`history:${name}`, wait, () => {
        if (room.loadingOlder && this.rooms.get(name) === room) this.sendHistory(room);
      });
      return;
    }
    // The answer will not come: let this room's button be used again (only this room's).
    room.loadingOlder = false;
    this.emit('older', room);
  }

  sayRefused(entry, f, retry, wait) {
    if (retry) {
      // Kept, with its cid; the pump sends everything again in order once allowed.
      this.outbox.later(entry, f.code, wait, this.now());
      this.emit('sayRetrying', entry, f.code);
    } else {
      this.outbox.delete(entry.cid);
      this.emit('outboxChanged');
      this.emit('sayFailed', entry, f);
    }
    this.pump();
  }

  // ------------------------------------------------------------------ frames out

  pumpJoins() {
    this.cancel('joins');
    const joins = this.joins;
    if (this.phase !== 'ready' || !joins) return;
    for (;;) {
      const now = this.now();
      const next = joins.next(now);
      if (!next) return;
      if (next.wait > 0) {
        this.later('joins', next.wait, () => this.pumpJoins());
        return;
      }
      if (next.op.type === 'join') {
        const room = this.rooms.get(next.op.room);
        if (!room) {
          joins.queue.shift();
          continue;
        }
        const frame = room.joinFrame();
        if (!this.send(frame)) return;
      } else if (!this.send({ type: 'leave', room: next.op.room })) {
        return;
      }
      joins.take(now);
    }
  }

  // Send queued messages one at a time, spaced RESEND_GAP apart, each only once its
  // room is joined on this connection. Kept in typing order.
  pump() {
    this.cancel('pump');
    if (this.phase !== 'ready') return;
    const now = this.now();
    const next = this.outbox.next(now, (name) => Boolean(this.rooms.get(name)?.joinedHere));
    if (!next) return;
    if (next.wait > 0) {
      this.later('pump', next.wait, () => this.pump());
      return;
    }
    const { entry } = next;
    if (this.send({ type: 'say', room: entry.room, text: entry.text, cid: entry.cid })) {
      this.outbox.sent(entry, now);
      if (entry.retry) {
        entry.retry = null;
        this.emit('saySending', entry);
      }
    }
    this.later('pump', RESEND_GAP, () => this.pump());
  }

  // ------------------------------------------------------------------ what the person does

  /** Queue a message; the view shows it as pending (`sayQueued`) before it is sent. */
  say(roomName, text) {
    const entry = this.outbox.add(this.env.newCid(), roomName, text);
    this.emit('sayQueued', entry);
    this.emit('outboxChanged');
    this.pump();
    return entry;
  }

  /**
   * Messages kept across a reload (Outbox.snapshot, from the tab's storage): shown as
   * pending again and sent with their own cids once their rooms are joined, so that
   * each is delivered exactly once, whether or not the server had stored it already.
   */
  restorePending(saved) {
    const added = this.outbox.restore(saved);
    for (const entry of added) {
      this.addRoom(entry.room);
      this.emit('sayQueued', entry);
    }
    if (added.length) this.pump();
    return added;
  }

  /** Whether anything typed is not yet acknowledged (a reload or close would risk it). */
  hasPending() { return this.outbox.entries.size > 0; }

  /** Add a room (joined now if welcomed, else after `welcome`); the Room. */
  addRoom(name) {
    let room = this.rooms.get(name);
    if (room) return room;
    room = new Room(name);
    this.rooms.set(name, room);
    this.emit('roomAdded', room);
    if (this.phase === 'ready' && this.joins) {
      this.joins.join(name);
      this.pumpJoins();
    }
    return room;
  }

  leaveRoom(name) {
    // Offline, the next `welcome` lists the room and the `leave` goes then.
    if (this.phase === 'ready' && this.joins) {
      this.joins.leave(name);
      this.pumpJoins();
    }
    this.removeRoom(name);
  }

  removeRoom(name) {
    const room = this.rooms.get(name);
    if (!room) return;
    this.rooms.delete(name);
    this.cancel(`history:${name}`);
    if (this.outbox.dropRoom(name).length) this.emit('outboxChanged');
    this.emit('roomRemoved', room);
  }

  /** Ask for the page before the oldest message held; false when it cannot go now. */
  loadOlder(name) {
    const room = this.rooms.get(name);
    if (!room || !room.joinedHere || room.loadingOlder || !room.more) return false;
    return this.sendHistory(room);
  }

  sendHistory(room) {
    if (!this.send({ type: 'history', room: room.name, before: room.minId, limit: 50 })) return false;
    this.historySent.push(room.name);
    room.loadingOlder = true;
    this.emit('older', room);
    return true;
  }

  /**
   * The person is typing in `name`. At most one notice every TYPING_SEND_GAP; typing
   * that starts inside the gap (right after sending) is announced once it has passed,
   * if `stillTyping()` then says so.
   */
  typing(name, stillTyping) {
    const room = this.rooms.get(name);
    if (!room || !room.joinedHere || this.phase !== 'ready' || !stillTyping()) return;
    const wait = this.lastTypingAt + TYPING_SEND_GAP - this.now();
    if (wait > 0) {
      if (!this.timers.has('typing')) this.later('typing', wait, () => this.typing(name, stillTyping));
      return;
    }
    this.lastTypingAt = this.now();
    this.send({ type: 'typing', room: room.name });
  }

  /** A nick from the form (valid, NFKC). */
  useNick(nick) {
    this.nick = nick;
    this.nickRejected = false;
    switch (this.phase) {
      case 'ready':
        // Same nick up to case: the session keeps its spelling, nothing to do.
        if (sameNick(nick, this.me)) return;
        // A new name is a new session: start a fresh connection, rooms are re-joined.
        this.session = null;
        this.connect();
        return;
      case 'open':
        this.sayHello(); // the contract allows another `hello` after an error
        this.emit('status');
        return;
      case 'connecting':
        return; // the `hello` on its way, or sent by onopen, carries this nick
      default:
        this.attempt = 0;
        this.connect();
    }
  }

  /** A token from the form or a link: always a fresh session on a fresh connection. */
  useToken(token) {
    this.token = token;
    this.nickRejected = false;
    // A token may name someone else.
    this.session = null;
    this.attempt = 0;
    this.connect();
  }
}

const HANDLERS = {
  welcome: ChatCore.prototype.onWelcome,
  settings: ChatCore.prototype.onSettings,
  joined: ChatCore.prototype.onJoined,
  left: ChatCore.prototype.onLeft,
  message: ChatCore.prototype.onMessage,
  ack: ChatCore.prototype.onAck,
  presence: ChatCore.prototype.onPresence,
  typing: ChatCore.prototype.onTyping,
  history: ChatCore.prototype.onHistory,
  pong: ChatCore.prototype.onPong,
  error: ChatCore.prototype.onError,
};
