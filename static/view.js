// The chat page's DOM: the only module that touches the document. It shows what the
// core (core/client.js) decides, through the callbacks the core emits, and hands the
// person's actions to it.
//
// Rules kept everywhere below:
// - user data reaches the DOM only through textContent / dataset, never HTML;
// - no inline styles (the Content-Security-Policy forbids them).

import { counts, shouldNotify, tabTitle } from './core/attention.js';
import {
  dayChanged, dayLabel, placement, timeLabel, untilMidnight, wantsOlder,
} from './core/layout.js';
import { NICK_RE, codePoints, sameNick } from './core/nick.js';
import { neighbourRoom, presenceLine } from './core/room.js';
import { mentionsMe, pieces } from './core/text.js';

const ROOM_RE = /^[a-z0-9][a-z0-9_-]{0,31}$/;
const NICK_KEY = 'chat.nick';
// Per tab: a reload resumes the session (a takeover) instead of racing the old socket's
// close and meeting `nick_taken`.
const SESSION_KEY = 'chat.session';
// Per tab too, never in localStorage: a token is a credential, kept no longer than the tab.
const TOKEN_KEY = 'chat.token';
// Desktop notifications for mentions: an opt-in that outlives the tab, as the
// browser's permission does.
const NOTIFY_KEY = 'chat.notify';
const DEFAULT_ROOM = 'lobby';
const TYPING_SHOW = 3000;      // ms an "is typing" line stays without news
const BOTTOM_SLACK = 40;       // px from the bottom that still count as "at the bottom"
// Messages a room keeps in the page; older ones come back with "Load older messages".
// A tab may stay open for weeks in a busy room, and every line costs memory and layout.
const MAX_SHOWN = 1000;
// Join and leave lines a room keeps: a room with much coming and going and few
// messages would otherwise grow them without bound (trimming counts messages).
const MAX_QUIET = 200;

const $ = (id) => document.getElementById(id);

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

export const tabSession = (value) => tabStorage(SESSION_KEY, value);
const tabToken = (value) => tabStorage(TOKEN_KEY, value);
// Per tab: the messages not yet acknowledged, so that a reload sends them again with
// their cids (core/outbox.js snapshot) instead of losing them.
const OUTBOX_KEY = 'chat.outbox';

function errorWords(tokenMode) {
  return {
    nick_invalid: 'That nick is not allowed. Use 1 to 32 letters, digits, "_", "-" or ".".',
    nick_taken: 'That nick is already in use. Please choose another one.',
    unauthorized: tokenMode
      ? 'The server refused this token (invalid or expired). Please paste a new one.'
      : 'The server refused this sign-in (not authorised).',
    room_invalid: 'Room names are 1 to 32 lowercase letters, digits, "_" or "-".',
    forbidden_room: 'You may not join that room.',
    too_many_rooms: 'You are in too many rooms: leave one first.',
    not_joined: 'You are not in that room (yet).',
    text_invalid: 'This message cannot be sent (empty, or contains control characters).',
    text_too_long: 'This message is too long.',
    rate_limited: 'Too many messages at once: slowing down.',
    unavailable: 'The server is unavailable: retrying.',
  };
}

// What a pending message's note says while it waits to be retried.
const RETRY_NOTES = {
  unavailable: 'server unavailable, retrying',
  rate_limited: 'sending… (slowed down)',
};

export class View {
  constructor(core, { tokenMode }) {
    this.core = core;
    this.tokenMode = tokenMode;
    this.words = errorWords(tokenMode);
    this.el = {
      nickForm: $('nick-form'), nick: $('nick'), nickError: $('nick-error'), nickSubmit: $('nick-submit'),
      status: $('status'), statusDetail: $('status-detail'), reconnect: $('reconnect'), notices: $('notices'),
      rooms: $('rooms'), roomForm: $('room-form'), roomName: $('room-name'), roomError: $('room-error'),
      members: $('members'), memberCount: $('member-count'), roomTitle: $('room-title'),
      older: $('older'), messages: $('messages'), newMessages: $('new-messages'), typing: $('typing'),
      composer: $('composer'), text: $('text'), send: $('send'), counter: $('counter'),
      token: $('token'), // only in token mode
      notify: $('notify'),
      sidebar: $('sidebar'), panelToggle: $('panel-toggle'), panelUnread: $('panel-unread'),
    };
    // Where the person signs in: the token field in token mode, else the nick field.
    this.signInField = this.el.token || this.el.nick;
    this.current = null;         // name of the room on screen
    this.shown = new Map();      // room name -> {list, item, typing, scroll, unread}
    this.sortKey = new WeakMap(); // node -> its place in a room's list (see placeNode)
    this.lines = new WeakMap();   // outbox entry -> its pending <li>
    // The person just asked to sign in: once welcomed, their next act is writing.
    this.focusOnWelcome = false;
    // When the day dividers and stamps were last all written ("Today" is relative to it).
    this.labelledAt = Date.now();
    this.midnightTimer = null;
  }

  describe(f) { return this.words[f.code] || f.message || `Error: ${f.code}`; }

  // ------------------------------------------------------------------ notices

  notice(f) { this.addNotice(typeof f === 'string' ? f : this.describe(f)); }

  addNotice(text) {
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
    this.el.notices.append(p);
    while (this.el.notices.children.length > 5) this.el.notices.firstElementChild.remove();
  }

  // ------------------------------------------------------------------ status

  status() {
    const { text, detail, reconnect, trouble, phase } = this.core.status();
    // Written only when it changes: a live region speaks at every write.
    if (this.el.status.textContent !== text) this.el.status.textContent = text;
    if (this.el.statusDetail.textContent !== detail) this.el.statusDetail.textContent = detail;
    // Offered only while it helps: not while connected, nor during the very first connect.
    this.el.reconnect.hidden = !reconnect;
    this.el.status.classList.toggle('trouble', trouble);
    document.body.dataset.phase = phase; // styling hook only
  }

  parked(reason) {
    if (reason === 'replaced') {
      this.addNotice('This chat was opened again elsewhere. Use "Reconnect now" to continue here.');
    } else if (reason === 'unauthorized') {
      this.showNickError(this.words.unauthorized);
    }
  }

  dropped() {
    for (const room of this.core.rooms.values()) this.clearTyping(room);
    this.renderOlder();
  }

  // ------------------------------------------------------------------ sign-in

  welcomed(f) {
    tabSession(f.session);
    this.el.nick.value = f.nick;
    this.el.nickSubmit.textContent = this.tokenMode ? 'Use another token' : 'Change nick';
    if (!this.tokenMode) storage(NICK_KEY, f.nick);
    this.showNickError('');
    // Only after a sign-in the person asked for (or the automatic one at start-up): a
    // reconnect must not pull the focus away from whatever they are doing.
    if (this.focusOnWelcome) this.focusComposer();
  }

  // To the message box, unless the person has moved on to something else meanwhile.
  focusComposer() {
    this.focusOnWelcome = false;
    const active = document.activeElement;
    if (!active || active === document.body || this.el.nickForm.contains(active)) this.el.text.focus();
  }

  limits() { this.updateCounter(); }

  helloRefused(f) {
    this.showNickError(this.describe(f));
    this.signInField.focus();
    this.signInField.select();
  }

  tokenRefused() {
    tabToken(null);
    this.el.token.value = '';
  }

  showNickError(text) {
    this.el.nickError.textContent = text;
    this.signInField.setAttribute('aria-invalid', text ? 'true' : 'false');
  }

  submitNick(ev) {
    ev.preventDefault();
    if (this.tokenMode) {
      this.submitToken();
      return;
    }
    const nick = this.el.nick.value.trim().normalize('NFKC');
    if (!NICK_RE.test(nick)) {
      this.showNickError(nick ? this.words.nick_invalid : 'Please enter a nick.');
      this.el.nick.focus();
      return;
    }
    this.showNickError('');
    storage(NICK_KEY, nick);
    if (this.core.phase === 'ready' && !sameNick(nick, this.core.me)) tabSession(null);
    this.focusOnWelcome = true;
    this.core.useNick(nick);
    // Same nick up to case: no new `welcome` comes, the sign-in is done already.
    if (this.core.phase === 'ready') this.focusComposer();
  }

  submitToken() {
    const token = this.el.token.value.trim();
    if (!token) {
      this.showNickError('Please paste your token.');
      this.el.token.focus();
      return;
    }
    this.showNickError('');
    this.el.token.value = '';
    this.focusOnWelcome = true;
    tabToken(token);
    tabSession(null);
    this.core.useToken(token);
  }

  // ------------------------------------------------------------------ rooms

  roomAdded(room) {
    const list = document.createElement('ol');
    list.className = 'message-list';
    const view = {
      list, item: null, typing: new Map(), unread: 0, mentions: 0,
      scroll: null, // saved scrollTop while another room is shown; null = at the bottom
    };
    this.shown.set(room.name, view);
    view.item = this.roomItem(room);
    this.el.rooms.append(view.item);
  }

  roomRemoved(room) {
    const view = this.shown.get(room.name);
    this.clearTyping(room);
    view.item.remove();
    this.shown.delete(room.name);
    if (this.current === room.name) {
      const next = this.core.rooms.keys().next();
      this.showRoom(next.done ? null : next.value);
      if (next.done) history.replaceState(null, '', location.pathname + location.search);
    }
  }

  joinRefused(name, f) { this.addNotice(`Could not join #${name}: ${this.describe(f)}`); }

  // Join (if new) and show a room. Used by the hash, the join form and start-up.
  openRoom(name) {
    this.core.addRoom(name);
    this.showRoom(name);
  }

  showRoom(name) {
    const prev = this.shown.get(this.current);
    if (prev && this.current !== name) prev.scroll = this.atBottom() ? null : this.el.messages.scrollTop;
    this.current = name;
    const view = this.shown.get(name);
    if (view) {
      view.unread = 0;
      view.mentions = 0;
      this.el.messages.replaceChildren(view.list);
      if (view.scroll == null) this.scrollToBottom();
      else this.el.messages.scrollTop = view.scroll;
      if (location.hash !== `#room=${name}`) history.replaceState(null, '', `#room=${name}`);
    } else {
      const hint = document.createElement('p');
      hint.className = 'empty';
      hint.textContent = 'Join a room to start chatting.';
      this.el.messages.replaceChildren(hint);
    }
    this.el.newMessages.hidden = true;
    for (const room of this.core.rooms.values()) this.renderRoomItem(room);
    this.renderRoom();
  }

  roomItem(room) {
    const li = document.createElement('li');
    const open = document.createElement('button');
    open.type = 'button';
    open.className = 'room-switch';
    const label = document.createElement('span');
    label.textContent = `#${room.name}`;
    const badge = document.createElement('span');
    badge.className = 'unread';
    open.append(label, badge);
    open.addEventListener('click', () => {
      this.showRoom(room.name);
      this.togglePanel(false); // on a phone, back to the log
    });
    const leave = document.createElement('button');
    leave.type = 'button';
    leave.className = 'room-leave';
    leave.textContent = '×';
    leave.title = `Leave #${room.name}`;
    leave.setAttribute('aria-label', `Leave #${room.name}`);
    leave.addEventListener('click', () => {
      this.core.leaveRoom(room.name);
      // The button is gone with its room: without this the focus falls back to <body>.
      this.el.text.focus();
    });
    li.append(open, leave);
    li.dataset.room = room.name;
    return li;
  }

  // Updated in place (not rebuilt) so keyboard focus on its buttons survives.
  renderRoomItem(room) {
    const view = this.shown.get(room.name);
    const current = room.name === this.current;
    view.item.classList.toggle('current', current);
    const open = view.item.querySelector('.room-switch');
    if (current) open.setAttribute('aria-current', 'true');
    else open.removeAttribute('aria-current');
    const badge = open.querySelector('.unread');
    badge.textContent = view.unread ? String(view.unread) : '';
    badge.hidden = !view.unread;
    badge.classList.toggle('mentioned', view.mentions > 0);
    let label = `#${room.name}`;
    if (view.unread) label += `, ${view.unread} unread`;
    if (view.mentions) label += `, ${view.mentions} mentioning you`;
    open.setAttribute('aria-label', label);
  }

  // The tab's title counts what the reader has not seen, in every room.
  renderTitle() {
    let unread = 0;
    let mentions = 0;
    for (const view of this.shown.values()) {
      unread += view.unread;
      mentions += view.mentions;
    }
    const title = tabTitle(this.core.rooms.has(this.current) ? this.current : null, unread, mentions);
    if (document.title !== title) document.title = title;
    // On a phone the room list is folded away: its toggle carries the count instead.
    const others = unread - (this.shown.get(this.current)?.unread || 0);
    this.el.panelUnread.textContent = others ? String(others) : '';
    this.el.panelUnread.hidden = !others;
    this.el.panelToggle.setAttribute('aria-label', others ? `Rooms, ${others} unread` : 'Rooms');
  }

  // The tab is back in sight: what is on screen is read now.
  seen() {
    const view = this.shown.get(this.current);
    if (view && (view.unread || view.mentions)) {
      view.unread = 0;
      view.mentions = 0;
      this.renderRoomItem(this.core.rooms.get(this.current));
    }
    this.renderTitle();
  }

  renderRoom() {
    const room = this.core.rooms.get(this.current);
    this.el.roomTitle.textContent = room ? `#${room.name}` : 'No room';
    this.renderTitle();
    this.renderMembers();
    this.renderTyping();
    this.renderOlder();
  }

  renderMembers() {
    const room = this.core.rooms.get(this.current);
    const names = room ? room.members : [];
    this.el.members.replaceChildren(...names.map((n) => {
      const li = document.createElement('li');
      li.dir = 'auto';
      li.textContent = n;
      if (sameNick(n, this.core.me)) li.classList.add('me');
      return li;
    }));
    this.el.memberCount.textContent = room ? `(${names.length})` : '';
  }

  renderTyping() {
    const view = this.shown.get(this.current);
    const names = view ? [...view.typing.keys()] : [];
    let text = '';
    if (names.length === 1) text = `${names[0]} is typing…`;
    else if (names.length === 2) text = `${names[0]} and ${names[1]} are typing…`;
    else if (names.length > 2) text = `${names.length} people are typing…`;
    this.el.typing.textContent = text;
  }

  clearTyping(room) {
    const view = this.shown.get(room.name);
    if (!view) return;
    for (const timer of view.typing.values()) clearTimeout(timer);
    view.typing.clear();
    if (room.name === this.current) this.renderTyping();
  }

  stopTyping(room, nick) {
    const view = this.shown.get(room.name);
    if (!view || !view.typing.has(nick)) return;
    clearTimeout(view.typing.get(nick));
    view.typing.delete(nick);
    if (room.name === this.current) this.renderTyping();
  }

  renderOlder() {
    const room = this.core.rooms.get(this.current);
    this.el.older.hidden = !(room && room.more);
    this.el.older.disabled = !(room && room.joinedHere) || Boolean(room && room.loadingOlder);
  }

  older(room) {
    if (room.name === this.current) this.renderOlder();
  }

  // ------------------------------------------------------------------ frames shown

  joined(room, { reset, gap, items }) {
    const view = this.captureScroll(room);
    if (reset) this.archiveRoomView(room); // history started over
    else if (gap) this.addGapLine(room);
    for (const item of items) this.showItem(room, item);
    this.restoreScroll(room, view, false, items.length > 0);
    if (room.name === this.current) this.renderRoom();
  }

  message(room, item) {
    const view = this.captureScroll(room);
    this.showItem(room, item);
    const shown = this.shown.get(room.name);
    // Only while the reader is at the bottom, so that nothing moves under their eyes.
    if (view ? view.bottom : shown.scroll == null) this.trimOldest(room);
    const nick = item.message.nick;
    this.stopTyping(room, nick);
    const own = sameNick(nick, this.core.me);
    if (room.name === this.current) this.restoreScroll(room, view, own, true);
    this.attend(room, item.message, own);
  }

  // Count a live message the reader has not seen, and notify a mention if asked to.
  attend(room, m, own) {
    const shown = this.shown.get(room.name);
    const hidden = document.visibilityState === 'hidden';
    const mention = !own && mentionsMe(String(m.text), this.core.me);
    const add = counts({ own, shown: room.name === this.current, hidden, mention });
    if (add.unread || add.mention) {
      shown.unread += add.unread;
      shown.mentions += add.mention;
      this.renderRoomItem(room);
      this.renderTitle();
    }
    const permission = typeof Notification === 'function' ? Notification.permission : 'denied';
    if (shouldNotify({ own, mention, hidden, optedIn: this.notifyOn(), permission })) {
      this.notify(room, m);
    }
  }

  notify(room, m) {
    let note;
    try {
      note = new Notification(`${m.nick} in #${room.name}`, { body: String(m.text), tag: `chat-${room.name}` });
    } catch {
      // Android Chrome grants the permission yet refuses the constructor (only a service
      // worker may notify there, and the page has none): the alert is skipped, and the
      // message, its mark and the title count stand as they are.
      return;
    }
    note.addEventListener('click', () => {
      window.focus();
      if (this.shown.has(room.name)) this.showRoom(room.name);
      note.close();
    });
  }

  // Phones: the rooms and members panel, folded away unless asked for.
  togglePanel(open = !this.el.sidebar.classList.contains('open')) {
    this.el.sidebar.classList.toggle('open', open);
    this.el.panelToggle.setAttribute('aria-expanded', String(open));
  }

  // ------------------------------------------------------------------ notifications

  notifyOn() { return storage(NOTIFY_KEY) === 'on'; }

  renderNotify() {
    const button = this.el.notify;
    const supported = typeof Notification === 'function' && Notification.permission !== 'denied';
    button.hidden = !supported;
    const on = supported && this.notifyOn() && Notification.permission === 'granted';
    button.setAttribute('aria-pressed', String(on));
    button.textContent = on ? 'Mention alerts: on' : 'Mention alerts: off';
  }

  // Asked for only from this click: a browser refuses (and people resent) a permission
  // prompt that nobody asked for.
  async toggleNotify() {
    if (this.notifyOn()) {
      storage(NOTIFY_KEY, 'off');
    } else {
      const permission = Notification.permission === 'granted'
        ? 'granted' : await Notification.requestPermission();
      if (permission === 'granted') storage(NOTIFY_KEY, 'on');
    }
    this.renderNotify();
  }

  presence(room, f) {
    if (f.event === 'leave') this.stopTyping(room, f.nick);
    // A quiet line in the log, after the newest message: the log is a live region, so
    // it is announced once, as the member list (not live) changes silently.
    const view = this.captureScroll(room);
    const li = document.createElement('li');
    li.className = 'presence';
    li.dir = 'auto';
    li.textContent = presenceLine(f);
    this.placeNode(room, li, room.maxId + 0.5);
    const quiet = this.shown.get(room.name).list.querySelectorAll(':scope > .presence');
    if (quiet.length > MAX_QUIET) {
      const next = quiet[0].nextElementSibling;
      quiet[0].remove();
      this.decorate(next);
    }
    this.restoreScroll(room, view, false, false);
    if (room.name === this.current) {
      this.renderMembers();
      this.renderTyping();
    }
  }

  typing(room, nick) {
    const view = this.shown.get(room.name);
    clearTimeout(view.typing.get(nick));
    view.typing.set(nick, setTimeout(() => {
      view.typing.delete(nick);
      if (room.name === this.current) this.renderTyping();
    }, TYPING_SHOW));
    if (room.name === this.current) this.renderTyping();
  }

  history(room, items) {
    const current = room.name === this.current;
    // Older messages go above: keep the line the reader is looking at where it is on
    // screen. Measured on that line: Chromium's scroll anchoring moves the view by
    // itself when it is not at the very top (now usual, as the page asks ahead), and
    // other browsers may not, and this holds either way.
    const anchor = current ? this.firstVisibleLine() : null;
    const before = anchor ? anchor.getBoundingClientRect().top : 0;
    for (const item of items) this.showItem(room, item);
    if (anchor && anchor.isConnected) {
      this.el.messages.scrollTop += anchor.getBoundingClientRect().top - before;
    }
    if (current) this.renderOlder();
  }

  firstVisibleLine() {
    const top = this.el.messages.getBoundingClientRect().top;
    const list = this.shown.get(this.current)?.list;
    for (let node = list?.firstElementChild; node; node = node.nextElementSibling) {
      if (node.getBoundingClientRect().bottom > top) return node;
    }
    return null;
  }

  showItem(room, { message: m, entry }) {
    if (entry) {
      this.settleLine(room, entry, m.id, m.ts, true);
      return;
    }
    const li = this.messageElement(String(m.nick), String(m.text), m.ts);
    li.dataset.id = m.id;
    this.placeNode(room, li, m.id);
  }

  // ------------------------------------------------------------------ messages

  setTime(time, ts) {
    const d = new Date(Number.isFinite(ts) ? ts : Date.now());
    time.dateTime = d.toISOString();
    time.textContent = timeLabel(d.getTime(), Date.now());
    time.title = d.toLocaleString();
    time.closest('li').dataset.ts = String(d.getTime());
  }

  // A message's day divider and grouping follow from the message line before it
  // (core/layout.js); a gap or archive line in between starts afresh. Called for a
  // line and for the one after it whenever lines are placed, moved or dropped.
  decorate(li) {
    if (!li || !li.classList.contains('message')) return;
    // Join and leave lines sit between messages without starting a new day; the header
    // is repeated below them, though, as it is no longer in sight of the line.
    let before = li.previousElementSibling;
    let quiet = false;
    while (before && before.classList.contains('presence')) {
      before = before.previousElementSibling;
      quiet = true;
    }
    const info = (node) => ({ nick: node.dataset.nick, ts: Number(node.dataset.ts) });
    const prev = before && before.classList.contains('message') ? info(before) : null;
    const { divider, grouped } = placement(prev, info(li));
    li.classList.toggle('grouped', grouped && !quiet);
    let day = li.querySelector(':scope > .day');
    if (divider) {
      if (!day) {
        day = document.createElement('p');
        day.className = 'day';
        li.prepend(day);
      }
      day.textContent = dayLabel(info(li).ts, Date.now());
    } else {
      day?.remove();
    }
  }

  // "Today", "Yesterday" and time-only stamps go stale at midnight in a tab left open:
  // rewritten when the local day has changed since they were (checked at the next
  // midnight and whenever the tab is shown again: a sleeping laptop fires no timer on
  // time, and a hidden tab's timers are throttled).
  refreshDays(now = Date.now()) {
    if (dayChanged(this.labelledAt, now)) {
      this.labelledAt = now;
      for (const view of this.shown.values()) {
        for (const li of view.list.querySelectorAll(':scope > li.message')) {
          const time = li.querySelector(':scope > time');
          if (time) time.textContent = timeLabel(Number(li.dataset.ts), now);
          this.decorate(li);
        }
      }
    }
    this.armMidnight(now);
  }

  armMidnight(now) {
    clearTimeout(this.midnightTimer);
    // A second late: a timer may fire a little early, and then the day has not changed.
    this.midnightTimer = setTimeout(() => this.refreshDays(), untilMidnight(now) + 1000);
  }

  messageElement(nick, text, ts) {
    const li = document.createElement('li');
    li.className = 'message';
    li.dataset.nick = nick;
    const time = document.createElement('time');
    li.append(time);
    this.setTime(time, ts);
    const who = document.createElement('span');
    who.className = 'nick';
    who.dir = 'auto';
    who.textContent = nick;
    const body = document.createElement('div');
    body.className = 'text';
    body.dir = 'auto';
    const own = sameNick(nick, this.core.me);
    body.append(...this.textNodes(text, own ? null : this.core.me));
    time.before(who);
    li.append(body);
    if (own) li.classList.add('own');
    else if (body.querySelector('.mention')) li.classList.add('mentions-me');
    return li;
  }

  // The text as DOM nodes, never as HTML: links as <a> (http and https only, checked
  // by core/text.js), mentions of `me` as <mark>, the rest as text nodes.
  textNodes(text, me) {
    return pieces(text, me).map((piece) => {
      if (piece.kind === 'link') {
        const a = document.createElement('a');
        a.href = piece.href;
        a.textContent = piece.text;
        // A new tab that cannot reach back into this one (window.opener) nor learn
        // where it came from.
        a.rel = 'noopener noreferrer';
        a.target = '_blank';
        return a;
      }
      if (piece.kind === 'mention') {
        const mark = document.createElement('mark');
        mark.className = 'mention';
        mark.textContent = piece.text;
        return mark;
      }
      return document.createTextNode(piece.text);
    });
  }

  // Insert a node so the list stays ordered by key: message id, a gap line just after
  // the id it follows, pending messages (Infinity) always last.
  placeNode(room, node, key) {
    const list = this.shown.get(room.name).list;
    this.sortKey.set(node, key);
    const oldNext = node.nextElementSibling; // a line moved (settled) leaves a neighbour
    let after = list.lastElementChild;
    while (after && this.sortKey.get(after) > key) after = after.previousElementSibling;
    if (after === node) after = node.previousElementSibling;
    if (after) after.after(node);
    else list.prepend(node);
    this.decorate(oldNext);
    this.decorate(node);
    this.decorate(node.nextElementSibling);
  }

  // Drop the oldest lines beyond MAX_SHOWN messages (with the gap and archive lines among
  // them); "Load older messages" fetches them again from the server.
  trimOldest(room) {
    let extra = room.ids.size - MAX_SHOWN;
    if (extra <= 0) return;
    const list = this.shown.get(room.name).list;
    const dropped = [];
    while (extra > 0 && list.firstElementChild) {
      const node = list.firstElementChild;
      const key = this.sortKey.get(node);
      if (key === Infinity) break; // pending lines are always last
      node.remove();
      if (room.ids.has(key)) {
        dropped.push(key);
        extra -= 1;
      }
    }
    // The oldest id left is near the top (at most a gap line before it): walk, do not
    // copy the whole list, as this runs for every message once a room is full.
    this.decorate(list.firstElementChild); // the new first line gets its day divider
    let first = list.firstElementChild;
    while (first && !room.ids.has(this.sortKey.get(first))) first = first.nextElementSibling;
    room.trimmed(dropped, first ? this.sortKey.get(first) : Infinity);
    if (room.name === this.current) this.renderOlder();
  }

  // A pending message is stored: turn its line into a normal one, in id order (or drop
  // it when the message is on screen already, replayed by `joined`).
  settleLine(room, entry, id, ts, fresh) {
    const li = this.lines.get(entry);
    if (!li) return;
    this.lines.delete(entry);
    if (!fresh) {
      li.remove();
      return;
    }
    li.classList.remove('pending', 'failed');
    li.removeAttribute('data-cid');
    li.querySelector('.state')?.remove();
    li.dataset.id = id;
    this.setTime(li.querySelector('time'), ts);
    const wasShown = li.isConnected;
    this.placeNode(room, li, id);
    if (wasShown && room.name === this.current && this.atBottom()) this.scrollToBottom();
  }

  settled(room, entry, ack, fresh) { this.settleLine(room, entry, ack.id, ack.ts, fresh); }

  addGapLine(room) {
    const li = document.createElement('li');
    li.className = 'gap';
    li.textContent = 'some messages could not be recovered';
    this.placeNode(room, li, room.maxId + 0.5);
  }

  // The room's history started over (new epoch): ids mean something else now. What the
  // reader has seen stays on screen, above a divider and out of the id order (keys below
  // 1); pending lines stay last.
  archiveRoomView(room) {
    const list = this.shown.get(room.name).list;
    const shown = [...list.children].filter((node) => Number.isFinite(this.sortKey.get(node)));
    shown.forEach((node, i) => {
      this.sortKey.set(node, i - shown.length - 1);
      node.removeAttribute('data-id');
    });
    if (shown.length) {
      const li = document.createElement('li');
      li.className = 'gap';
      li.textContent = 'The server started its history over: messages above this line are from before.';
      this.placeNode(room, li, -1);
    }
  }

  // ------------------------------------------------------------------ scrolling

  atBottom() {
    const m = this.el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < BOTTOM_SLACK;
  }

  scrollToBottom() {
    this.el.messages.scrollTop = this.el.messages.scrollHeight;
    this.el.newMessages.hidden = true;
  }

  captureScroll(room) {
    return room.name === this.current ? { bottom: this.atBottom() } : null;
  }

  // Follow new messages only if the reader was already at the bottom; otherwise leave
  // the view alone and offer a button.
  restoreScroll(room, view, force, added) {
    if (!view) return;
    if (view.bottom || force) this.scrollToBottom();
    else if (added) this.el.newMessages.hidden = false;
  }

  // ------------------------------------------------------------------ sending

  outboxChanged() {
    const pending = this.core.outbox.snapshot();
    tabStorage(OUTBOX_KEY, pending.length ? JSON.stringify(pending) : null);
  }

  restoreOutbox() {
    let saved = null;
    try {
      saved = JSON.parse(tabStorage(OUTBOX_KEY) || 'null');
    } catch { /* unreadable: nothing to restore */ }
    if (saved) this.core.restorePending(saved);
  }

  sayQueued(entry) {
    const li = this.messageElement(this.core.me || this.core.nick || '', entry.text, Date.now());
    li.classList.add('pending', 'own');
    li.dataset.cid = entry.cid;
    const note = document.createElement('span');
    note.className = 'state';
    note.textContent = 'sending…';
    li.append(note);
    this.lines.set(entry, li);
    this.placeNode(this.core.rooms.get(entry.room), li, Infinity);
    this.scrollToBottom();
  }

  // Refused for now: still pending, the person sees why it waits (not a failure).
  sayRetrying(entry, code) {
    const li = this.lines.get(entry);
    if (!li) return;
    li.dataset.retry = code;
    li.querySelector('.state').textContent = RETRY_NOTES[code] || 'sending…';
  }

  saySending(entry) {
    const li = this.lines.get(entry);
    if (!li) return;
    li.removeAttribute('data-retry');
    li.querySelector('.state').textContent = 'sending…';
  }

  sayFailed(entry, f) {
    const li = this.lines.get(entry);
    if (!li) return;
    this.lines.delete(entry);
    li.classList.remove('pending');
    li.classList.add('failed');
    li.removeAttribute('data-retry');
    const note = li.querySelector('.state');
    note.textContent = f.message || this.describe(f);
    const remove = document.createElement('button');
    remove.type = 'button';
    remove.className = 'remove';
    remove.textContent = 'Remove';
    remove.addEventListener('click', () => li.remove());
    note.after(remove);
  }

  submitMessage(ev) {
    ev.preventDefault();
    const text = this.el.text.value;
    const room = this.core.rooms.get(this.current);
    if (!room || !text.trim() || codePoints(text) > this.core.maxText) return;
    if (!this.core.canSayHello()) {
      this.showNickError(this.tokenMode ? 'Paste your token first.' : 'Choose a nick first.');
      this.signInField.focus();
      return;
    }
    this.el.text.value = '';
    this.updateCounter();
    this.core.say(room.name, text);
  }

  updateCounter() {
    const max = this.core.maxText;
    const n = codePoints(this.el.text.value);
    this.el.counter.textContent = `${n} / ${max}`;
    this.el.counter.classList.toggle('near', n > max * 0.9);
    this.el.counter.classList.toggle('over', n > max);
    this.el.send.disabled = n > max || !this.el.text.value.trim();
  }

  submitRoom(ev) {
    ev.preventDefault();
    const name = this.el.roomName.value.trim().replace(/^#/, '').toLowerCase();
    if (!ROOM_RE.test(name)) {
      this.el.roomError.textContent = this.words.room_invalid;
      this.el.roomName.focus();
      return;
    }
    this.el.roomError.textContent = '';
    this.el.roomName.value = '';
    this.openRoom(name);
    this.togglePanel(false);
    this.el.text.focus();
  }

  loadOlder() {
    if (this.current) this.core.loadOlder(this.current);
  }

  // ------------------------------------------------------------------ start

  bind() {
    const el = this.el;
    el.nickForm.addEventListener('submit', (ev) => this.submitNick(ev));
    el.roomForm.addEventListener('submit', (ev) => this.submitRoom(ev));
    el.composer.addEventListener('submit', (ev) => this.submitMessage(ev));
    el.text.addEventListener('input', () => {
      this.updateCounter();
      if (this.current) this.core.typing(this.current, () => Boolean(el.text.value.trim()));
    });
    el.text.addEventListener('keydown', (ev) => {
      // Enter sends, Shift+Enter is a new line; never while an IME is composing.
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        el.composer.requestSubmit();
      }
    });
    el.older.addEventListener('click', () => this.loadOlder());
    el.newMessages.addEventListener('click', () => this.scrollToBottom());
    el.messages.addEventListener('scroll', () => {
      if (this.atBottom()) el.newMessages.hidden = true;
      // Reading back in time fetches the page before by itself; the button stays for
      // keyboard users. core.loadOlder asks at most once at a time per room.
      if (this.current && wantsOlder(el.messages)) this.core.loadOlder(this.current);
    });
    el.reconnect.addEventListener('click', () => this.core.reconnectNow());
    window.addEventListener('hashchange', () => {
      const name = roomFromHash();
      if (!name || name === this.current) return;
      // A link to a room (or the address bar) is a wish to talk there, as the join form is.
      this.openRoom(name);
      this.togglePanel(false);
      this.el.text.focus();
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') {
        this.core.wake();
        this.seen();
        this.refreshDays();
      }
    });
    el.notify.addEventListener('click', () => this.toggleNotify());
    el.panelToggle.addEventListener('click', () => this.togglePanel());
    // Alt+Up / Alt+Down: the previous / next room, from anywhere on the page (the hint
    // under the room list says so). Alt with arrows moves nothing in a text field.
    document.addEventListener('keydown', (ev) => {
      if (!ev.altKey || ev.ctrlKey || ev.metaKey || ev.shiftKey) return;
      if (ev.key !== 'ArrowUp' && ev.key !== 'ArrowDown') return;
      const next = neighbourRoom([...this.core.rooms.keys()], this.current, ev.key === 'ArrowUp' ? -1 : 1);
      ev.preventDefault();
      if (next) this.showRoom(next);
    });
    // Something typed is not acknowledged yet: ask before the tab goes. A reload keeps it
    // (sessionStorage) and sends it again, but closing the tab would lose it.
    window.addEventListener('beforeunload', (ev) => {
      if (!this.core.hasPending()) return;
      ev.preventDefault();
      ev.returnValue = ''; // older Chromium shows the prompt only with this set
    });
    window.addEventListener('online', () => this.core.setOffline(false));
    window.addEventListener('offline', () => this.core.setOffline(true));
  }

  start() {
    this.bind();
    this.renderNotify();
    this.armMidnight(Date.now());
    if (this.tokenMode) {
      const linked = tokenFromHash();
      if (linked) tabToken(linked);
      this.core.token = linked || tabToken();
    } else {
      const stored = storage(NICK_KEY);
      if (stored) {
        this.el.nick.value = stored;
        this.core.nick = stored;
      }
    }
    this.openRoom(roomFromHash() || DEFAULT_ROOM);
    this.restoreOutbox();
    this.updateCounter();
    this.focusOnWelcome = this.core.canSayHello();
    this.core.start(); // signs in at once with a stored nick or token; else `hello` waits
    (this.core.canSayHello() ? this.el.text : this.signInField).focus();
  }
}

function roomFromHash() {
  const name = new URLSearchParams(location.hash.slice(1)).get('room');
  return name && ROOM_RE.test(name.toLowerCase()) ? name.toLowerCase() : null;
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
