// How a message sits among its neighbours: under a day divider, grouped under the
// previous message's header (same person, a few minutes apart), and whether its time
// needs the full date. Pure: times are passed in (ms); days are the browser's local
// days, as the person reads them.

import { sameNick } from './nick.js';

/** ms between two messages of one person that still share one header. */
export const GROUP_GAP = 5 * 60 * 1000;

/** Whether two times fall on the same local calendar day. */
export function sameDay(a, b) {
  const x = new Date(a);
  const y = new Date(b);
  return x.getFullYear() === y.getFullYear() && x.getMonth() === y.getMonth()
    && x.getDate() === y.getDate();
}

/**
 * Where a message goes relative to the one before it (`prev`, null for the first
 * shown): {divider: a day divider above it, grouped: no header of its own}.
 * Each is {nick, ts}. A message older than the one before it (clocks differ between
 * the servers of a cluster) starts a group of its own.
 */
export function placement(prev, cur) {
  const divider = !prev || !sameDay(prev.ts, cur.ts);
  const gap = prev ? cur.ts - prev.ts : -1;
  const grouped = !divider && sameNick(prev.nick, cur.nick) && gap >= 0 && gap <= GROUP_GAP;
  return { divider, grouped };
}

const DAY = 24 * 60 * 60 * 1000;

/** A day divider's words: "Today", "Yesterday", else the full date. */
export function dayLabel(ts, now, locale = undefined) {
  if (sameDay(ts, now)) return 'Today';
  // Noon of today minus one day: safe across a change to or from summer time.
  const noon = new Date(now);
  noon.setHours(12, 0, 0, 0);
  if (sameDay(ts, noon.getTime() - DAY)) return 'Yesterday';
  return new Date(ts).toLocaleDateString(locale, {
    weekday: 'long', day: 'numeric', month: 'long', year: 'numeric',
  });
}

/** A message's time: the time of day today, the full date and time before today. */
export function timeLabel(ts, now, locale = undefined) {
  const d = new Date(ts);
  const time = d.toLocaleTimeString(locale, { hour: '2-digit', minute: '2-digit' });
  if (sameDay(ts, now)) return time;
  return `${d.toLocaleDateString(locale, { day: 'numeric', month: 'short', year: 'numeric' })}, ${time}`;
}

/**
 * Whether the local day has changed since the labels were last written at `since`:
 * then "Today" and time-only stamps are stale (a tab left open past midnight, or woken
 * from sleep on another day). A clock set back across midnight counts too.
 */
export function dayChanged(since, now) {
  return !sameDay(since, now);
}

/**
 * ms from `now` until the next local midnight (never 0: at midnight exactly, the one
 * after). Computed from the calendar, not as 24 h, so a day of 23 or 25 hours (a change
 * to or from summer time) ends where the wall clock says.
 */
export function untilMidnight(now) {
  const next = new Date(now);
  next.setHours(24, 0, 0, 0);
  return next.getTime() - now;
}

/** px from the top of the log within which the next older page is asked for. */
export const OLDER_MARGIN = 200;

/**
 * Whether scrolling has brought the reader near enough to the top to fetch the page
 * before: ahead of the very top, so that a reader scrolling on rarely waits, and only
 * when the log actually scrolls (a short log keeps its button).
 */
export function wantsOlder({ scrollTop, scrollHeight, clientHeight }) {
  return scrollHeight > clientHeight && scrollTop <= Math.min(OLDER_MARGIN, clientHeight / 2);
}
