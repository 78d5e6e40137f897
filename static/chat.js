// Browser client of the chat service: speaks contract version 1 (PROTOCOL.md,
// sections 3 to 5) over one WebSocket. Plain ES module, no build step.
//
// Rules kept everywhere below:
// - user data reaches the DOM only through textContent / dataset, never HTML;
// - no inline styles (the Content-Security-Policy forbids them);
// - the connection is assumed to break at any moment: everything the user did
//   (rooms, unsent messages) lives in `state`/`outbox` and is replayed on resume.

const $ = (id) => document.getElementById(id);

const el = {
  nickForm: $('nick-form'), nick: $('nick'), nickError: $('nick-error'), nickSubmit: $('nick-submit'),
  status: $('status'), reconnect: $('reconnect'), notices: $('notices'),
  rooms: $('rooms'), roomForm: $('room-form'), roomName: $('room-name'), roomError: $('room-error'),
  members: $('members'), memberCount: $('member-count'), roomTitle: $('room-title'),
  older: $('older'), messages: $('messages'), newMessages: $('new-messages'), typing: $('typing'),
  composer: $('composer'), text: $('text'), send: $('send'), counter: $('counter'),
  token: $('token'), // only in token mode
};
// Where the person signs in: the token field in token mode, else the nick field.
const signInField = el.token || el.nick;

const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const NICK_RE = /^[\p{L}\p{N}_.-]{1,32}$/u;
const NICK_KEY = 'chat.nick';
// Per tab: a reload resumes the session (a takeover) instead of racing the old socket's
// close and meeting `nick_taken`.
const SESSION_KEY = 'chat.session';
// Per tab too, never in localStorage: a token is a credential, kept no longer than the tab.
const TOKEN_KEY = 'chat.token';
const DEFAULT_ROOM = 'lobby';
const DEFAULT_HEARTBEAT = { interval: 10, timeout: 30 }; // s, until `welcome` tells the real ones
const BACKOFF_BASE = 0.5;      // s
const BACKOFF_CAP = 30;        // s
const RESEND_GAP = 250;        // ms between two `say` frames, so a backlog does not trip the rate limit
// ms: the server relays at most one `typing` a second; a little more, so that jitter on
// the way does not make the server drop one as too soon.
const TYPING_SEND_GAP = 1100;
const TYPING_SHOW = 3000;      // ms an "is typing" line stays without news
const STUCK_HOLD = 3000;       // ms "server not responding" stays up at least, so people can read it
const BOTTOM_SLACK = 40;       // px from the bottom that still count as "at the bottom"
// Messages a room keeps in the page; older ones come back with "Load older messages".
// A tab may stay open for weeks in a busy room, and every line costs memory and layout.
const MAX_SHOWN = 1000;

const cfg = {
  wsPath: document.body.dataset.wsPath || '/ws',
  // Token mode (`auth.secret` set on the server): `hello` carries a token, whose
  // subject is the nick, instead of a nick the person picks.
  tokenMode: document.body.dataset.auth === 'token',
  maxText: Number.parseInt(document.body.dataset.maxText, 10) || 2000,
};

// What the user has: survives reconnects.
const state = {
  nick: null,          // nick to send in `hello` (as typed, NFKC)
  me: null,            // nick the server knows us by (from `welcome`)
  rooms: new Map(),    // name -> room (see newRoom), in the order joined
  current: null,       // name of the room on screen
  token: null,         // token mode: the token `hello` carries
  lastTypingAt: -Infinity,
  typingTimer: null,   // a `typing` held back by TYPING_SEND_GAP, sent when it has passed
};

// Messages not yet acknowledged, in the order typed. cid -> entry.
// entry: {cid, room, text, li, status: 'queued' | 'sent'}
const outbox = new Map();

// One connection at a time. phase:
//   connecting  socket opening, or `hello` sent and no `welcome` yet
//   open        socket up, waiting for the user to pick a (new) nick
//   ready       welcomed
//   waiting     back-off timer running before the next attempt
//   parked      not trying on our own (replaced by another tab, unauthorised)
const conn = {
  ws: null, phase: 'waiting', session: tabSession(), welcomed: false,
  heartbeat: { ...DEFAULT_HEARTBEAT },
  lastFrameAt: 0, lastTickAt: 0, rtt: null,
  attempt: 0, retryAt: 0, retryTimer: 0,
  pingTimer: 0, tickTimer: 0, tickPeriod: 250,
  pumpTimer: 0, pumpPausedUntil: 0, lastSayAt: -Infinity,
  joinQueue: [],       // rooms of `join` frames not answered yet (replies come in request order)
  nickRejected: false, // last `hello` failed: wait for the user before sending another
  stuckUntil: 0,       // show "server not responding" until then
  offline: !navigator.onLine,
};

// Sort position of every node in a room's message list (see placeNode).
const sortKey = new WeakMap();

// ---------------------------------------------------------------- helpers

const now = () => performance.now();

// Compare nicks roughly as the server does (NFKC + casefold).
const nickKey = (n) => String(n).normalize('NFKC').toLowerCase();
const sameNick = (a, b) => a != null && b != null && nickKey(a) === nickKey(b);
const codePoints = (s) => [...s].length;

function newCid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID exists only in secure contexts; plain http on a LAN address lacks it.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function storage(key, value) {
  // localStorage throws in some privacy modes; the nick is only a convenience.
  try {
    if (value === undefined) return localStorage.getItem(key);
    localStorage.setItem(key, value);
  } catch { /* ignore */ }
  return null;
}

function tabStorage(key, value) {
  try {
    if (value === undefined) return sessionStorage.getItem(key);
    if (value === null) sessionStorage.removeItem(key);
    else sessionStorage.setItem(key, value);
  } catch { /* ignore: keeping it across a reload is only a convenience */ }
  return null;
}

function tabSession(value) { return tabStorage(SESSION_KEY, value); }
function tabToken(value) { return tabStorage(TOKEN_KEY, value); }

function send(frame) {
  const ws = conn.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return false;
  ws.send(JSON.stringify(frame));
  return true;
}

function wsUrl() {
  const url = new URL(cfg.wsPath, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

const ERROR_WORDS = {
  nick_invalid: 'That nick is not allowed. Use 1 to 32 letters, digits, "_", "-" or ".".',
  nick_taken: 'That nick is already in use. Please choose another one.',
  unauthorized: cfg.tokenMode
    ? 'The server refused this token (invalid or expired). Please paste a new one.'
    : 'The server refused this sign-in (not authorised).',
  room_invalid: 'Room names are 1 to 32 lowercase letters, digits, "_" or "-".',
  forbidden_room: 'You may not join that room.',
  too_many_rooms: 'You are in too many rooms: leave one first.',
  not_joined: 'You are not in that room (yet).',
  text_invalid: 'This message cannot be sent (empty, or contains control characters).',
  text_too_long: 'This message is too long.',
  rate_limited: 'Too many messages at once: slowing down.',
};
const describeError = (f) => ERROR_WORDS[f.code] || f.message || `Error: ${f.code}`;

// ---------------------------------------------------------------- notices

function addNotice(text) {
  const p = document.createElement('p');
  p.className = 'notice';
  const span = document.createElement('span');
  span.textContent = text;
  const close = document.createElement('button');
  close.type = 'button';
  close.textContent = '×';
  close.setAttribute('aria-label', 'Dismiss notice');
  close.addEventListener('click', () => p.remove());
  p.append(span, close);
  el.notices.append(p);
  while (el.notices.children.length > 5) el.notices.firstElementChild.remove();
}

// ---------------------------------------------------------------- status

function statusText() {
  if (conn.offline) return 'offline';
  // Shown for a few seconds even if the reconnect is quicker, so the hiccup can be read.
  if (now() < conn.stuckUntil) return 'server not responding';
  switch (conn.phase) {
    case 'ready':
    case 'open':
      return conn.rtt == null ? 'connected' : `connected (RTT ${Math.round(conn.rtt)} ms)`;
    case 'connecting':
      return comingBack() ? 'reconnecting…' : 'connecting…';
    case 'waiting':
      return `reconnecting in ${Math.max(1, Math.ceil((conn.retryAt - now()) / 1000))} s`;
    default:
      return 'offline';
  }
}

// A page that was connected before is getting back, not signing in for the first time.
const comingBack = () => conn.welcomed || conn.attempt > 0;

function renderStatus() {
  const text = statusText();
  if (el.status.textContent !== text) el.status.textContent = text;
  // Offered only while it helps: not while connected, nor during the very first connect.
  el.reconnect.hidden = !(conn.phase === 'waiting' || conn.phase === 'parked'
    || (conn.phase === 'connecting' && comingBack()));
  el.status.classList.toggle('trouble', now() < conn.stuckUntil || !el.reconnect.hidden);
  document.body.dataset.phase = conn.phase; // styling hook only
}

// ---------------------------------------------------------------- connection

function connect() {
  clearTimeout(conn.retryTimer);
  dropSocket();
  let ws;
  try {
    ws = new WebSocket(wsUrl());
  } catch (err) {
    console.error(err);
    scheduleReconnect();
    return;
  }
  conn.ws = ws;
  conn.phase = 'connecting';
  conn.heartbeat = { ...DEFAULT_HEARTBEAT }; // the connect attempt gets the default 30 s
  conn.lastFrameAt = now();
  ws.onopen = () => {
    conn.lastFrameAt = now();
    startPinging(); // also before `welcome`, so a page waiting for a nick is not dropped as silent
    sayHello();
    renderStatus();
  };
  ws.onmessage = (ev) => {
    conn.lastFrameAt = now(); // any frame proves the server is alive
    handleFrame(ev.data);
  };
  ws.onclose = (ev) => onClose(ev);
  ws.onerror = () => { /* a close event follows */ };
  renderStatus();
}

// Forget the current socket at once: handlers detached, close() not awaited, so a
// dead server cannot keep us waiting. Per-connection state goes with it.
function dropSocket() {
  const ws = conn.ws;
  if (!ws) return;
  conn.ws = null;
  ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
  try { ws.close(); } catch { /* already closing */ }
  clearInterval(conn.pingTimer);
  clearTimeout(conn.pumpTimer);
  conn.rtt = null;
  conn.joinQueue = [];
  for (const room of state.rooms.values()) {
    room.joinedHere = false;
    room.loadingOlder = false;
    clearTyping(room);
  }
  // Whatever was sent and not acknowledged is sent again after the resume.
  for (const entry of outbox.values()) if (entry.status === 'sent') entry.status = 'queued';
  renderOlder();
}

function scheduleReconnect(delayMs) {
  clearTimeout(conn.retryTimer);
  if (delayMs == null) {
    // Exponential back-off with full jitter, so many clients of a restarted
    // server do not all come back in the same instant.
    delayMs = Math.random() * Math.min(BACKOFF_CAP, BACKOFF_BASE * 2 ** conn.attempt) * 1000;
    conn.attempt = Math.min(conn.attempt + 1, 16);
  }
  conn.phase = 'waiting';
  conn.retryAt = now() + delayMs;
  conn.retryTimer = setTimeout(connect, delayMs);
  renderStatus();
}

function park(reason) {
  dropSocket();
  clearTimeout(conn.retryTimer);
  conn.phase = 'parked';
  if (reason) addNotice(reason);
  renderStatus();
}

function onClose(ev) {
  dropSocket();
  switch (ev.code) {
    case 4002: // another connection took this session over: do not fight it
      park('This chat was opened again elsewhere. Use "Reconnect now" to continue here.');
      break;
    case 4003:
      forgetToken();
      showNickError(ERROR_WORDS.unauthorized);
      park();
      break;
    case 1001: // server going down for a restart: come back soon, but not all at once
      scheduleReconnect((0.2 + Math.random() * 1.3) * 1000);
      break;
    default:
      scheduleReconnect();
  }
}

// Nothing arrived for too long: the server (or the path to it) is dead.
function serverUnresponsive() {
  conn.stuckUntil = now() + STUCK_HOLD;
  dropSocket();
  scheduleReconnect();
}

// Whether `hello` has what it needs: a token in token mode, else a nick.
const canSayHello = () => Boolean(cfg.tokenMode ? state.token : state.nick);

function sayHello() {
  if (!canSayHello() || conn.nickRejected) {
    conn.phase = 'open';
    return;
  }
  // In token mode the token's subject is the nick: sending a remembered nick as well
  // could only make the server refuse a valid token.
  const hello = cfg.tokenMode ? { type: 'hello', token: state.token } : { type: 'hello', nick: state.nick };
  if (conn.session) hello.session = conn.session;
  if (send(hello)) conn.phase = 'connecting';
}

function sendPing() {
  const ws = conn.ws;
  // A non-empty send buffer means the link is not draining; piling pings on it helps nobody.
  if (!ws || ws.readyState !== WebSocket.OPEN || ws.bufferedAmount !== 0) return;
  send({ type: 'ping', t: now() });
}

function startPinging() {
  clearInterval(conn.pingTimer);
  conn.pingTimer = setInterval(sendPing, conn.heartbeat.interval * 1000);
}

// One timer drives the watchdog and the status countdown.
function startTicker() {
  clearInterval(conn.tickTimer);
  conn.tickPeriod = Math.min(250, (conn.heartbeat.interval * 1000) / 4);
  conn.lastTickAt = now();
  conn.tickTimer = setInterval(tick, conn.tickPeriod);
}

function tick() {
  const t = now();
  // A tick far later than planned means timers were asleep (background tab
  // throttling, suspended laptop): silence measured across that sleep says
  // nothing about the server. Ask it now and give it a fair time to answer.
  const late = t - conn.lastTickAt > Math.max(4 * conn.tickPeriod, 2000);
  conn.lastTickAt = t;
  if (conn.ws) {
    const timeout = conn.heartbeat.timeout * 1000;
    if (late) {
      const grace = Math.min(timeout / 2, Math.max(conn.heartbeat.interval * 1000, 2000));
      conn.lastFrameAt = Math.max(conn.lastFrameAt, t - timeout + grace);
      sendPing();
    } else if (t - conn.lastFrameAt > timeout) {
      serverUnresponsive();
    }
  }
  renderStatus();
}

// Tab visible again, or network back: check the link now rather than at the next tick.
function wake() {
  if (conn.phase === 'ready' || conn.phase === 'open') sendPing();
  else if (conn.phase === 'waiting') connect();
  renderStatus();
}

// ---------------------------------------------------------------- frames in

const handlers = {
  welcome: onWelcome, joined: onJoined, left: onLeft, message: onMessage, ack: onAck,
  presence: onPresence, typing: onTyping, history: onHistory, pong: onPong, error: onError,
};

function handleFrame(data) {
  if (typeof data !== 'string') return;
  let frame;
  try {
    frame = JSON.parse(data);
  } catch {
    return; // the legacy heartbeat "~h#c~" and anything else not JSON
  }
  if (!frame || typeof frame !== 'object' || typeof frame.type !== 'string') return;
  if (!Object.hasOwn(handlers, frame.type)) return; // unknown types are ignored
  try {
    handlers[frame.type](frame);
  } catch (err) {
    console.error('while handling', frame.type, err);
  }
}

function onWelcome(f) {
  conn.phase = 'ready';
  conn.attempt = 0;
  conn.session = f.session;
  conn.welcomed = true;
  tabSession(f.session);
  state.me = f.nick;
  el.nick.value = f.nick;
  el.nickSubmit.textContent = cfg.tokenMode ? 'Use another token' : 'Change nick';
  if (!cfg.tokenMode) storage(NICK_KEY, f.nick);
  showNickError('');
  const hb = f.heartbeat || {};
  if (hb.interval > 0 && hb.timeout > 0) conn.heartbeat = { interval: hb.interval, timeout: hb.timeout };
  if (f.limits && f.limits.text > 0) cfg.maxText = f.limits.text;
  updateCounter();
  startPinging();
  startTicker();
  sendPing(); // an RTT right away

  // Rooms the session still holds but the user left while we were away.
  for (const name of f.rooms || []) if (!state.rooms.has(name)) send({ type: 'leave', room: name });
  for (const room of state.rooms.values()) requestJoin(room);
  renderStatus();
}

function requestJoin(room) {
  const frame = { type: 'join', room: room.name };
  // Resume from the newest message held, in the history it belongs to.
  if (room.epoch != null && room.maxId > 0) {
    frame.since = room.maxId;
    frame.epoch = room.epoch;
  }
  room.sentSince = 'since' in frame;
  if (send(frame)) conn.joinQueue.push(room.name);
}

function onJoined(f) {
  const i = conn.joinQueue.indexOf(f.room);
  if (i >= 0) conn.joinQueue.splice(i, 1);
  const room = state.rooms.get(f.room);
  if (!room) return; // left meanwhile; our `leave` is on its way
  const view = captureScroll(room);
  if (room.epoch != null && f.epoch !== room.epoch) archiveRoomView(room); // history started over
  else if (f.complete === false && room.sentSince) addGapLine(room);
  room.epoch = f.epoch;
  room.joinedHere = true;
  room.members = Array.isArray(f.members) ? [...f.members] : [];
  for (const m of f.messages || []) receiveMessage(room, m);
  if (!room.historyDone) room.more = room.ids.size > 0 && room.minId > 1;
  restoreScroll(room, view);
  if (room.name === state.current) renderRoom();
  pump();
}

function onLeft(f) {
  // Usually removed already when the user clicked; covers a leave from elsewhere.
  if (state.rooms.has(f.room)) removeRoom(f.room);
}

function onMessage(f) {
  const room = state.rooms.get(f.room);
  if (!room) return;
  const view = captureScroll(room);
  const added = receiveMessage(room, f);
  if (!added) return;
  // Only while the reader is at the bottom, so that nothing moves under their eyes.
  if (view ? view.bottom : room.scroll == null) trimOldest(room);
  if (room.typing.has(f.nick)) {
    clearTimeout(room.typing.get(f.nick));
    room.typing.delete(f.nick);
    if (room.name === state.current) renderTyping();
  }
  if (room.name === state.current) restoreScroll(room, view, sameNick(f.nick, state.me));
  else {
    room.unread += 1;
    renderRoomItem(room);
  }
}

function onAck(f) {
  const entry = outbox.get(f.cid);
  if (!entry) return; // the `message` came first and settled it already
  const room = state.rooms.get(entry.room);
  if (room) settle(room, entry, f.id, f.ts);
  else outbox.delete(entry.cid);
  pump();
}

function onPresence(f) {
  const room = state.rooms.get(f.room);
  if (!room || typeof f.nick !== 'string') return;
  const key = nickKey(f.nick);
  const at = room.members.findIndex((n) => nickKey(n) === key);
  if (f.event === 'join' && at < 0) {
    room.members.push(f.nick);
    room.members.sort((a, b) => (nickKey(a) < nickKey(b) ? -1 : nickKey(a) > nickKey(b) ? 1 : 0));
  } else if (f.event === 'leave' && at >= 0) {
    room.members.splice(at, 1);
    if (room.typing.has(f.nick)) {
      clearTimeout(room.typing.get(f.nick));
      room.typing.delete(f.nick);
    }
  }
  if (room.name === state.current) {
    renderMembers();
    renderTyping();
  }
}

function onTyping(f) {
  const room = state.rooms.get(f.room);
  if (!room || typeof f.nick !== 'string' || sameNick(f.nick, state.me)) return;
  clearTimeout(room.typing.get(f.nick));
  room.typing.set(f.nick, setTimeout(() => {
    room.typing.delete(f.nick);
    if (room.name === state.current) renderTyping();
  }, TYPING_SHOW));
  if (room.name === state.current) renderTyping();
}

function onHistory(f) {
  const room = state.rooms.get(f.room);
  if (!room) return;
  room.loadingOlder = false;
  const current = room.name === state.current;
  // Older messages go above: keep what the reader is looking at in place.
  const before = el.messages.scrollHeight;
  const top = el.messages.scrollTop;
  for (const m of f.messages || []) receiveMessage(room, m);
  if (current) el.messages.scrollTop = top + (el.messages.scrollHeight - before);
  room.more = Boolean(f.more) && room.minId > 1;
  if (!f.more) room.historyDone = true;
  if (current) renderOlder();
}

function onPong(f) {
  if (typeof f.t !== 'number') return;
  const rtt = now() - f.t;
  if (rtt >= 0) conn.rtt = rtt;
  renderStatus();
}

function onError(f) {
  if (typeof f.ref === 'string' && outbox.has(f.ref)) {
    sayFailed(outbox.get(f.ref), f);
    return;
  }
  switch (f.ref) {
    case 'hello':
      helloFailed(f);
      return;
    case 'join':
      joinFailed(f);
      return;
    case 'history': // the reply will not come: let the button be used again
      for (const room of state.rooms.values()) room.loadingOlder = false;
      renderOlder();
      break;
    case 'typing': // best effort; a lost one does not matter
    case 'ping':
    case 'leave':
      return;
  }
  if (f.code === 'nick_invalid' || f.code === 'nick_taken' || f.code === 'unauthorized') {
    helloFailed(f);
    return;
  }
  addNotice(describeError(f));
}

function helloFailed(f) {
  if (f.code === 'bad_request' && conn.phase === 'ready') return; // a stray second hello
  conn.nickRejected = true;
  conn.phase = 'open';
  if (f.code === 'unauthorized') forgetToken();
  showNickError(describeError(f));
  signInField.focus();
  signInField.select();
  renderStatus();
}

// A refused token is not tried again, on a reconnect or after a reload.
function forgetToken() {
  if (!cfg.tokenMode) return;
  state.token = null;
  tabToken(null);
  el.token.value = '';
}

function joinFailed(f) {
  const name = conn.joinQueue.shift();
  if (!name || !state.rooms.has(name)) {
    addNotice(describeError(f));
    return;
  }
  addNotice(`Could not join #${name}: ${describeError(f)}`);
  removeRoom(name);
}

function sayFailed(entry, f) {
  if (f.code === 'rate_limited') {
    // Keep it; the pump retries everything in order once the server allows it.
    entry.status = 'queued';
    const wait = (Number(f.retry_after) > 0 ? Number(f.retry_after) : 1) * 1000;
    conn.pumpPausedUntil = Math.max(conn.pumpPausedUntil, now() + wait);
    pump();
    return;
  }
  outbox.delete(entry.cid);
  const li = entry.li;
  li.classList.remove('pending');
  li.classList.add('failed');
  const note = li.querySelector('.state');
  note.textContent = f.message || describeError(f);
  const remove = document.createElement('button');
  remove.type = 'button';
  remove.className = 'remove';
  remove.textContent = 'Remove';
  remove.addEventListener('click', () => li.remove());
  note.after(remove);
  pump();
}

// ---------------------------------------------------------------- rooms

function newRoom(name) {
  const list = document.createElement('ol');
  list.className = 'message-list';
  return {
    name, list,
    epoch: null, ids: new Set(), minId: Infinity, maxId: 0,
    more: false, historyDone: false, loadingOlder: false,
    members: [], typing: new Map(), unread: 0,
    joinedHere: false, sentSince: false,
    scroll: null, // saved scrollTop while another room is shown; null = at the bottom
    item: null,   // its <li> in #rooms
  };
}

function roomFromHash() {
  const name = new URLSearchParams(location.hash.slice(1)).get('room');
  return name && ROOM_RE.test(name.toLowerCase()) ? name.toLowerCase() : null;
}

// Join (if new) and show a room. Used by the hash, the join form and start-up.
function openRoom(name) {
  let room = state.rooms.get(name);
  if (!room) {
    room = newRoom(name);
    state.rooms.set(name, room);
    room.item = roomItem(room);
    el.rooms.append(room.item);
    if (conn.phase === 'ready') requestJoin(room);
  }
  showRoom(name);
}

function showRoom(name) {
  const prev = state.rooms.get(state.current);
  if (prev && prev.name !== name) prev.scroll = atBottom() ? null : el.messages.scrollTop;
  state.current = name;
  const room = state.rooms.get(name);
  if (room) {
    room.unread = 0;
    el.messages.replaceChildren(room.list);
    if (room.scroll == null) scrollToBottom();
    else el.messages.scrollTop = room.scroll;
    if (location.hash !== `#room=${name}`) history.replaceState(null, '', `#room=${name}`);
  } else {
    const hint = document.createElement('p');
    hint.className = 'empty';
    hint.textContent = 'Join a room to start chatting.';
    el.messages.replaceChildren(hint);
  }
  el.newMessages.hidden = true;
  for (const r of state.rooms.values()) renderRoomItem(r);
  renderRoom();
}

function leaveRoom(name) {
  if (conn.phase === 'ready') send({ type: 'leave', room: name });
  // Offline, the next `welcome` lists the room and we send the `leave` then.
  removeRoom(name);
}

function removeRoom(name) {
  const room = state.rooms.get(name);
  if (!room) return;
  state.rooms.delete(name);
  clearTyping(room);
  room.item.remove();
  for (const entry of [...outbox.values()]) if (entry.room === name) outbox.delete(entry.cid);
  if (state.current === name) {
    const next = state.rooms.keys().next();
    showRoom(next.done ? null : next.value);
    if (next.done) history.replaceState(null, '', location.pathname + location.search);
  }
}

function roomItem(room) {
  const li = document.createElement('li');
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'room-switch';
  const label = document.createElement('span');
  label.textContent = `#${room.name}`;
  const badge = document.createElement('span');
  badge.className = 'unread';
  open.append(label, badge);
  open.addEventListener('click', () => showRoom(room.name));
  const leave = document.createElement('button');
  leave.type = 'button';
  leave.className = 'room-leave';
  leave.textContent = '×';
  leave.title = `Leave #${room.name}`;
  leave.setAttribute('aria-label', `Leave #${room.name}`);
  leave.addEventListener('click', () => leaveRoom(room.name));
  li.append(open, leave);
  li.dataset.room = room.name;
  return li;
}

// Updated in place (not rebuilt) so keyboard focus on its buttons survives.
function renderRoomItem(room) {
  const current = room.name === state.current;
  room.item.classList.toggle('current', current);
  const open = room.item.querySelector('.room-switch');
  if (current) open.setAttribute('aria-current', 'true');
  else open.removeAttribute('aria-current');
  const badge = open.querySelector('.unread');
  badge.textContent = room.unread ? String(room.unread) : '';
  badge.hidden = !room.unread;
  open.setAttribute('aria-label', `#${room.name}${room.unread ? `, ${room.unread} unread` : ''}`);
}

function renderRoom() {
  const room = state.rooms.get(state.current);
  el.roomTitle.textContent = room ? `#${room.name}` : 'No room';
  document.title = room ? `#${room.name} – Chat` : 'Chat';
  renderMembers();
  renderTyping();
  renderOlder();
}

function renderMembers() {
  const room = state.rooms.get(state.current);
  const names = room ? room.members : [];
  el.members.replaceChildren(...names.map((n) => {
    const li = document.createElement('li');
    li.dir = 'auto';
    li.textContent = n;
    if (sameNick(n, state.me)) li.classList.add('me');
    return li;
  }));
  el.memberCount.textContent = room ? `(${names.length})` : '';
}

function renderTyping() {
  const room = state.rooms.get(state.current);
  const names = room ? [...room.typing.keys()] : [];
  let text = '';
  if (names.length === 1) text = `${names[0]} is typing…`;
  else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
  else if (names.length > 2) text = `${names.length} people are typing…`;
  el.typing.textContent = text;
}

function clearTyping(room) {
  for (const timer of room.typing.values()) clearTimeout(timer);
  room.typing.clear();
  if (room.name === state.current) renderTyping();
}

function renderOlder() {
  const room = state.rooms.get(state.current);
  el.older.hidden = !(room && room.more);
  el.older.disabled = !(room && room.joinedHere) || Boolean(room && room.loadingOlder);
}

function loadOlder() {
  const room = state.rooms.get(state.current);
  if (!room || !room.joinedHere || room.loadingOlder || !room.more) return;
  if (send({ type: 'history', room: room.name, before: room.minId, limit: 50 })) {
    room.loadingOlder = true;
    renderOlder();
  }
}

// ---------------------------------------------------------------- messages

// Insert a node so the list stays ordered by key: message id, a gap line just
// after the id it follows, pending messages (Infinity) always last.
function placeNode(list, node, key) {
  sortKey.set(node, key);
  let after = list.lastElementChild;
  while (after && sortKey.get(after) > key) after = after.previousElementSibling;
  if (after) after.after(node);
  else list.prepend(node);
}

function setTime(time, ts) {
  const d = new Date(Number.isFinite(ts) ? ts : Date.now());
  time.dateTime = d.toISOString();
  time.textContent = d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
  time.title = d.toLocaleString();
}

function messageElement(nick, text, ts) {
  const li = document.createElement('li');
  li.className = 'message';
  li.dataset.nick = nick;
  const who = document.createElement('span');
  who.className = 'nick';
  who.dir = 'auto';
  who.textContent = nick;
  const time = document.createElement('time');
  setTime(time, ts);
  const body = document.createElement('div');
  body.className = 'text';
  body.dir = 'auto';
  body.textContent = text;
  li.append(who, time, body);
  if (sameNick(nick, state.me)) li.classList.add('own');
  return li;
}

// Show a message frame unless this id is shown already. Returns true if new.
function receiveMessage(room, m) {
  if (!m || typeof m.id !== 'number' || room.ids.has(m.id)) return false;
  // Our own message coming back (live, or replayed after a reconnect):
  // it replaces the pending line instead of appearing twice.
  const entry = typeof m.cid === 'string' ? outbox.get(m.cid) : null;
  if (entry && entry.room === room.name && sameNick(m.nick, state.me)) {
    settle(room, entry, m.id, m.ts);
    return true;
  }
  const li = messageElement(String(m.nick), String(m.text), m.ts);
  li.dataset.id = m.id;
  remember(room, m.id);
  placeNode(room.list, li, m.id);
  return true;
}

// Drop the oldest lines beyond MAX_SHOWN messages (with the gap and archive lines
// among them); "Load older messages" fetches them again from the server.
function trimOldest(room) {
  let extra = room.ids.size - MAX_SHOWN;
  if (extra <= 0) return;
  while (extra > 0 && room.list.firstElementChild) {
    const node = room.list.firstElementChild;
    const key = sortKey.get(node);
    if (key === Infinity) break; // pending lines are always last
    node.remove();
    if (room.ids.delete(key)) extra -= 1;
  }
  // The oldest id left is near the top (at most a gap line before it): walk, do not
  // copy the whole list, as this runs for every message once a room is full.
  let first = room.list.firstElementChild;
  while (first && !room.ids.has(sortKey.get(first))) first = first.nextElementSibling;
  room.minId = first ? sortKey.get(first) : Infinity;
  room.more = true;
  room.historyDone = false;
  if (room.name === state.current) renderOlder();
}

function remember(room, id) {
  room.ids.add(id);
  if (id > room.maxId) room.maxId = id;
  if (id < room.minId) room.minId = id;
}

// A pending message is stored: turn its line into a normal one, in id order.
function settle(room, entry, id, ts) {
  outbox.delete(entry.cid);
  const li = entry.li;
  if (room.ids.has(id)) { // already on screen (e.g. replayed by `joined`)
    li.remove();
    return;
  }
  remember(room, id);
  li.classList.remove('pending', 'failed');
  li.removeAttribute('data-cid');
  li.querySelector('.state')?.remove();
  li.dataset.id = id;
  setTime(li.querySelector('time'), ts);
  const wasShown = li.isConnected;
  placeNode(room.list, li, id);
  if (wasShown && room.name === state.current && atBottom()) scrollToBottom();
}

function addGapLine(room) {
  const li = document.createElement('li');
  li.className = 'gap';
  li.textContent = 'some messages could not be recovered';
  placeNode(room.list, li, room.maxId + 0.5);
}

// The room's history started over (new epoch): ids mean something else now. What
// the reader has seen stays on screen, above a divider and out of the id order
// (keys below 1); pending lines stay last.
function archiveRoomView(room) {
  const shown = [...room.list.children].filter((node) => Number.isFinite(sortKey.get(node)));
  shown.forEach((node, i) => {
    sortKey.set(node, i - shown.length - 1);
    node.removeAttribute('data-id');
  });
  if (shown.length) {
    const li = document.createElement('li');
    li.className = 'gap';
    li.textContent = 'The server started its history over: messages above this line are from before.';
    placeNode(room.list, li, -1);
  }
  room.ids.clear();
  room.minId = Infinity;
  room.maxId = 0;
  room.more = false;
  room.historyDone = false;
}

// ---------------------------------------------------------------- scrolling

const atBottom = () =>
  el.messages.scrollHeight - el.messages.scrollTop - el.messages.clientHeight < BOTTOM_SLACK;

function scrollToBottom() {
  el.messages.scrollTop = el.messages.scrollHeight;
  el.newMessages.hidden = true;
}

function captureScroll(room) {
  return room.name === state.current ? { bottom: atBottom(), count: room.ids.size } : null;
}

// Follow new messages only if the reader was already at the bottom; otherwise
// leave the view alone and offer a button.
function restoreScroll(room, view, force = false) {
  if (!view) return;
  if (view.bottom || force) scrollToBottom();
  else if (room.ids.size > view.count) el.newMessages.hidden = false;
}

// ---------------------------------------------------------------- sending

function pendingElement(entry) {
  const li = messageElement(state.me || state.nick || '', entry.text, Date.now());
  li.classList.add('pending', 'own');
  li.dataset.cid = entry.cid;
  const note = document.createElement('span');
  note.className = 'state';
  note.textContent = 'sending…';
  li.append(note);
  return li;
}

// Send queued messages one at a time, spaced RESEND_GAP apart, each only once
// its room is joined on this connection. Kept in typing order.
function pump() {
  clearTimeout(conn.pumpTimer);
  if (conn.phase !== 'ready') return;
  let next = null;
  for (const entry of outbox.values()) {
    if (entry.status === 'queued' && state.rooms.get(entry.room)?.joinedHere) {
      next = entry;
      break;
    }
  }
  if (!next) return;
  const wait = Math.max(conn.pumpPausedUntil, conn.lastSayAt + RESEND_GAP) - now();
  if (wait > 0) {
    conn.pumpTimer = setTimeout(pump, wait);
    return;
  }
  if (send({ type: 'say', room: next.room, text: next.text, cid: next.cid })) {
    next.status = 'sent';
    conn.lastSayAt = now();
  }
  conn.pumpTimer = setTimeout(pump, RESEND_GAP);
}

function submitMessage(ev) {
  ev.preventDefault();
  const text = el.text.value;
  const room = state.rooms.get(state.current);
  if (!room || !text.trim() || codePoints(text) > cfg.maxText) return;
  if (!canSayHello()) {
    showNickError(cfg.tokenMode ? 'Paste your token first.' : 'Choose a nick first.');
    signInField.focus();
    return;
  }
  const entry = { cid: newCid(), room: room.name, text, status: 'queued', li: null };
  entry.li = pendingElement(entry);
  outbox.set(entry.cid, entry);
  placeNode(room.list, entry.li, Infinity);
  scrollToBottom();
  el.text.value = '';
  updateCounter();
  pump();
}

function updateCounter() {
  const n = codePoints(el.text.value);
  el.counter.textContent = `${n} / ${cfg.maxText}`;
  el.counter.classList.toggle('near', n > cfg.maxText * 0.9);
  el.counter.classList.toggle('over', n > cfg.maxText);
  el.send.disabled = n > cfg.maxText || !el.text.value.trim();
}

function maybeSendTyping() {
  const room = state.rooms.get(state.current);
  if (!room || !room.joinedHere || conn.phase !== 'ready' || !el.text.value.trim()) return;
  const wait = state.lastTypingAt + TYPING_SEND_GAP - now();
  if (wait > 0) {
    // Too soon after the last one. Send it once the gap has passed, if the person is
    // still composing: typing right after sending a message would otherwise never be
    // announced.
    if (state.typingTimer === null) {
      state.typingTimer = setTimeout(() => { state.typingTimer = null; maybeSendTyping(); }, wait);
    }
    return;
  }
  state.lastTypingAt = now();
  send({ type: 'typing', room: room.name });
}

// ---------------------------------------------------------------- forms

function showNickError(text) {
  el.nickError.textContent = text;
  signInField.setAttribute('aria-invalid', text ? 'true' : 'false');
}

function submitToken() {
  const token = el.token.value.trim();
  if (!token) {
    showNickError('Please paste your token.');
    el.token.focus();
    return;
  }
  showNickError('');
  el.token.value = '';
  state.token = token;
  tabToken(token);
  conn.nickRejected = false;
  // A token may name someone else: always a fresh session on a fresh connection.
  conn.session = null;
  tabSession(null);
  conn.attempt = 0;
  connect();
}

function submitNick(ev) {
  ev.preventDefault();
  if (cfg.tokenMode) {
    submitToken();
    return;
  }
  const nick = el.nick.value.trim().normalize('NFKC');
  if (!NICK_RE.test(nick)) {
    showNickError(nick ? ERROR_WORDS.nick_invalid : 'Please enter a nick.');
    el.nick.focus();
    return;
  }
  showNickError('');
  storage(NICK_KEY, nick);
  state.nick = nick;
  conn.nickRejected = false;
  switch (conn.phase) {
    case 'ready':
      // Same nick up to case: the session keeps its spelling, nothing to do.
      if (sameNick(nick, state.me)) return;
      // A new name is a new session: start a fresh connection, rooms are re-joined.
      conn.session = null;
      connect();
      return;
    case 'open':
      sayHello(); // the contract allows another `hello` after an error
      renderStatus();
      return;
    case 'connecting':
      if (conn.ws && conn.ws.readyState === WebSocket.OPEN) return; // hello on its way
      return; // onopen sends the hello with this nick
    default:
      conn.attempt = 0;
      connect();
  }
}

function submitRoom(ev) {
  ev.preventDefault();
  const name = el.roomName.value.trim().replace(/^#/, '').toLowerCase();
  if (!ROOM_RE.test(name)) {
    el.roomError.textContent = ERROR_WORDS.room_invalid;
    el.roomName.focus();
    return;
  }
  el.roomError.textContent = '';
  el.roomName.value = '';
  openRoom(name);
  el.text.focus();
}

// ---------------------------------------------------------------- start

function bind() {
  el.nickForm.addEventListener('submit', submitNick);
  el.roomForm.addEventListener('submit', submitRoom);
  el.composer.addEventListener('submit', submitMessage);
  el.text.addEventListener('input', () => {
    updateCounter();
    maybeSendTyping();
  });
  el.text.addEventListener('keydown', (ev) => {
    // Enter sends, Shift+Enter is a new line; never while an IME is composing.
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      el.composer.requestSubmit();
    }
  });
  el.older.addEventListener('click', loadOlder);
  el.newMessages.addEventListener('click', scrollToBottom);
  el.messages.addEventListener('scroll', () => {
    if (atBottom()) el.newMessages.hidden = true;
  });
  el.reconnect.addEventListener('click', () => {
    conn.stuckUntil = 0;
    connect();
  });
  window.addEventListener('hashchange', () => {
    const name = roomFromHash();
    if (name && name !== state.current) openRoom(name);
  });
  document.addEventListener('visibilitychange', () => {
    if (document.visibilityState === 'visible') wake();
  });
  window.addEventListener('online', () => {
    conn.offline = false;
    wake();
  });
  window.addEventListener('offline', () => {
    conn.offline = true;
    renderStatus();
  });
}

// Token mode: a link may hand the page a token (`/#token=...`, as a site that signs its
// users in would). It is kept for this tab and taken out of the address at once, so it
// is not bookmarked, shared or left in the history.
function tokenFromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const token = params.get('token');
  if (token === null) return null;
  params.delete('token');
  const rest = params.toString();
  history.replaceState(null, '', rest ? `#${rest}` : location.pathname + location.search);
  return token.trim() || null;
}

function start() {
  bind();
  if (cfg.tokenMode) {
    const linked = tokenFromHash();
    if (linked) tabToken(linked);
    state.token = linked || tabToken();
  } else {
    const stored = storage(NICK_KEY);
    if (stored) {
      el.nick.value = stored;
      state.nick = stored;
    }
  }
  openRoom(roomFromHash() || DEFAULT_ROOM);
  updateCounter();
  startTicker();
  connect(); // signs in at once with a stored nick or token; otherwise `hello` waits for the form
  (canSayHello() ? el.text : signInField).focus();
}

start();
