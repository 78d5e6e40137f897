// What the page holds of one room, enough to resume it and to show each message once:
// the epoch (the history the ids belong to), the ids held, members. The same rules as
// chat/client/state.py's RoomState, with the ids kept as a set because the page also
// pages back (older ids arrive after newer ones) and drops its oldest lines.

import { byNickKey, nickKey } from './nick.js';

export class Room {
  constructor(name) {
    this.name = name;
    this.epoch = null;        // null until the first `joined`
    this.ids = new Set();     // ids held in this epoch: each is shown once
    this.minId = Infinity;
    this.maxId = 0;
    this.more = false;        // older messages can be fetched
    this.historyDone = false; // the server said there are no older ones
    this.loadingOlder = false;
    this.members = [];
    this.joinedHere = false;  // joined on the current connection
    this.sentSince = false;   // the last `join` asked to resume
  }

  /** The `join` that resumes from the newest message held, in its epoch. */
  joinFrame() {
    const frame = { type: 'join', room: this.name };
    if (this.epoch != null && this.maxId > 0) {
      frame.since = this.maxId;
      frame.epoch = this.epoch;
    }
    this.sentSince = 'since' in frame;
    return frame;
  }

  /**
   * Take a `joined`. `reset`: the history started over (new epoch), the ids held mean
   * nothing now; `gap`: a resume could not bring back every message missed.
   */
  onJoined(f) {
    const reset = this.epoch != null && f.epoch !== this.epoch;
    if (reset) this.restart();
    const gap = !reset && f.complete === false && this.sentSince;
    this.epoch = f.epoch;
    this.joinedHere = true;
    this.members = Array.isArray(f.members) ? [...f.members] : [];
    return { reset, gap };
  }

  restart() {
    this.ids.clear();
    this.minId = Infinity;
    this.maxId = 0;
    this.more = false;
    this.historyDone = false;
  }

  /** Whether a message with this id is new in this epoch; it is then held. */
  accept(id) {
    if (typeof id !== 'number' || this.ids.has(id)) return false;
    this.ids.add(id);
    if (id > this.maxId) this.maxId = id;
    if (id < this.minId) this.minId = id;
    return true;
  }

  /** After a replay: older messages exist unless the server said so, or id 1 is held. */
  replayed() {
    if (!this.historyDone) this.more = this.ids.size > 0 && this.minId > 1;
  }

  /** Take a `history` page's answer (its messages were accepted one by one). */
  paged(f) {
    this.loadingOlder = false;
    this.more = Boolean(f.more) && this.minId > 1;
    if (!f.more) this.historyDone = true;
  }

  /** The view dropped its oldest lines: `oldest` is the oldest id it still shows. */
  trimmed(dropped, oldest) {
    for (const id of dropped) this.ids.delete(id);
    this.minId = oldest;
    this.more = true;
    this.historyDone = false;
  }

  /** Apply a `presence`; true when the member list changed. */
  presence(f) {
    if (typeof f.nick !== 'string') return false;
    const key = nickKey(f.nick);
    const at = this.members.findIndex((n) => nickKey(n) === key);
    if (f.event === 'join' && at < 0) {
      this.members.push(f.nick);
      this.members.sort(byNickKey);
      return true;
    }
    if (f.event === 'leave' && at >= 0) {
      this.members.splice(at, 1);
      return true;
    }
    return false;
  }
}

/**
 * The room `step` places from `current` in `names` (the sidebar's order), wrapping
 * around: Alt+Up is -1, Alt+Down +1. Null when there is nowhere to go.
 */
export function neighbourRoom(names, current, step) {
  if (!names.length) return null;
  const at = names.indexOf(current);
  if (at < 0) return names[0];
  const next = names[(at + step + names.length * Math.abs(step)) % names.length];
  return next === current ? null : next;
}

/** The quiet line a `presence` puts in the log. */
export function presenceLine(f) {
  if (f.event === 'join') return `${f.nick} joined`;
  const why = { timeout: ' (connection lost)', closed: ' (disconnected)' }[f.reason] || '';
  return `${f.nick} left${why}`;
}
