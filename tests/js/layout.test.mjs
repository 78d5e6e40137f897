import assert from 'node:assert/strict';
import { test } from 'node:test';

import {
  GROUP_GAP, dayChanged, dayLabel, placement, sameDay, timeLabel, untilMidnight,
} from '../../static/core/layout.js';

const at = (y, mo, d, h = 12, mi = 0) => new Date(y, mo - 1, d, h, mi).getTime();

test('one person within a few minutes is grouped; another person, a long pause or a new day is not', () => {
  const t = at(2026, 11, 30, 10);
  assert.deepEqual(placement(null, { nick: 'a', ts: t }), { divider: true, grouped: false });
  assert.deepEqual(placement({ nick: 'a', ts: t }, { nick: 'A', ts: t + GROUP_GAP }),
    { divider: false, grouped: true });
  assert.deepEqual(placement({ nick: 'a', ts: t }, { nick: 'a', ts: t + GROUP_GAP + 1 }),
    { divider: false, grouped: false });
  assert.deepEqual(placement({ nick: 'a', ts: t }, { nick: 'b', ts: t + 1000 }),
    { divider: false, grouped: false });
  assert.deepEqual(placement({ nick: 'a', ts: t }, { nick: 'a', ts: t - 1000 }),
    { divider: false, grouped: false }, 'an earlier time starts its own group');
  const late = at(2026, 11, 29, 23, 59);
  assert.deepEqual(placement({ nick: 'a', ts: late }, { nick: 'a', ts: late + 2 * 60_000 }),
    { divider: true, grouped: false }, 'midnight divides even within the gap');
  assert.equal(placement({ nick: 'straße', ts: t }, { nick: 'STRASSE', ts: t }).grouped, true);
});

test('day dividers say Today, Yesterday, else the full date', () => {
  const now = at(2026, 11, 30, 9);
  assert.ok(sameDay(at(2026, 11, 30, 0, 1), now));
  assert.equal(dayLabel(at(2026, 11, 30, 1), now, 'en-GB'), 'Today');
  assert.equal(dayLabel(at(2026, 11, 29, 23), now, 'en-GB'), 'Yesterday');
  assert.equal(dayLabel(at(2026, 11, 27, 8), now, 'en-GB'), 'Friday, 27 November 2026');
  assert.equal(dayLabel(at(2025, 12, 31), at(2026, 1, 1), 'en-GB'), 'Yesterday');
});

test('messages before today show their full date', () => {
  const now = at(2026, 11, 30, 9);
  assert.equal(timeLabel(at(2026, 11, 30, 8, 5), now, 'en-GB'), '08:05');
  assert.equal(timeLabel(at(2026, 11, 27, 14, 3), now, 'en-GB'), '27 Nov 2026, 14:03');
});

test('older messages are wanted near the top of a log that scrolls', async () => {
  const { wantsOlder } = await import('../../static/core/layout.js');
  assert.equal(wantsOlder({ scrollTop: 0, scrollHeight: 5000, clientHeight: 600 }), true);
  assert.equal(wantsOlder({ scrollTop: 150, scrollHeight: 5000, clientHeight: 600 }), true);
  assert.equal(wantsOlder({ scrollTop: 900, scrollHeight: 5000, clientHeight: 600 }), false);
  assert.equal(wantsOlder({ scrollTop: 0, scrollHeight: 600, clientHeight: 600 }), false, 'nothing to scroll');
  assert.equal(wantsOlder({ scrollTop: 150, scrollHeight: 900, clientHeight: 200 }), false, 'half a small view');
});

test('the day has changed once local midnight has passed since the labels were written', () => {
  const evening = at(2026, 11, 30, 23, 59);
  assert.equal(dayChanged(evening, evening + 59_000), false, 'still 30 November');
  assert.equal(dayChanged(evening, at(2026, 12, 1, 0, 0)), true, 'midnight');
  assert.equal(dayChanged(evening, at(2026, 12, 3, 9)), true, 'woken days later');
  assert.equal(dayChanged(at(2026, 12, 1, 0, 1), evening), true, 'a clock set back');
  assert.equal(dayChanged(at(2026, 11, 30, 0, 0), evening), false);
});

test('the next local midnight is where the calendar puts it', () => {
  assert.equal(untilMidnight(at(2026, 11, 30, 23, 59)), 60_000);
  assert.equal(untilMidnight(at(2026, 11, 30, 12)), 12 * 3600_000);
  const midnight = at(2026, 12, 1, 0, 0);
  assert.ok(untilMidnight(midnight) > 0, 'at midnight exactly: the next one');
  assert.equal(midnight + untilMidnight(midnight), at(2026, 12, 2, 0, 0));
  for (const ts of [at(2026, 3, 29, 0, 30), at(2026, 10, 25, 1, 30), at(2026, 6, 1, 8)]) {
    assert.ok(dayChanged(ts, ts + untilMidnight(ts)), 'lands on the next day');
    assert.ok(!dayChanged(ts, ts + untilMidnight(ts) - 1), 'and not before');
  }
});
