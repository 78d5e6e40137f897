import assert from 'node:assert/strict';
import { test } from 'node:test';

import { TokenBucket } from '../../static/core/bucket.js';
import { JoinPacer } from '../../static/core/joins.js';
import { answerJoins, makeCore, welcomed } from './fakes.mjs';

const ROOMS = Array.from({ length: 20 }, (_, i) => `room${i}`);

/**
 * The server's side: a bucket per connection, full at the start, one token per join or
 * leave (contract section 3). Returns how many of the frames, arriving at `times`, it
 * would refuse.
 */
function refusedByServer(times, { messages, per, burst }) {
  const server = new TokenBucket(messages / per, burst, times[0] ?? 0);
  let refused = 0;
  for (const at of times) {
    if (server.delay(at) > 0) refused += 1;
    else server.take(at);
  }
  return refused;
}

/** Reconnect with `rooms` and the given join_rate; the times each join was sent. */
function rejoinTimes(rate, rooms = ROOMS) {
  const t = makeCore();
  const times = [];
  const ws = welcomed(t, rooms, { limits: { text: 2000, join_rate: rate } });
  const record = () => { for (const f of ws.take('join')) times.push(t.clock.t); };
  record();
  for (let i = 0; i < 200 && times.length < rooms.length; i++) {
    t.clock.advance(50);
    record();
  }
  return { t, ws, times };
}

test('with the default join_rate a session in 20 rooms re-joins them all at once', () => {
  const rate = { messages: 5, per: 1, burst: 40 };
  const { times } = rejoinTimes(rate);
  assert.equal(times.length, 20);
  assert.equal(new Set(times).size, 1, 'no wait');
  assert.equal(refusedByServer(times, rate), 0);
});

test('a tight join_rate paces the re-joins so that the server refuses none', () => {
  const rate = { messages: 2, per: 1, burst: 5 };
  const { times } = rejoinTimes(rate);
  assert.equal(times.length, 20);
  assert.ok(times.at(-1) - times[0] > 7000, 'spread out over (20 - 4) / 1.8 s');
  assert.equal(refusedByServer(times, rate), 0);
  // Sent as fast as the server allows, they would be refused.
  assert.ok(refusedByServer(times.map(() => times[0]), rate) > 0);
});

test('a join answered rate_limited or unavailable is asked again after retry_after', () => {
  for (const code of ['rate_limited', 'unavailable']) {
    const t = makeCore();
    const ws = welcomed(t, ['lobby', 'dev']);
    assert.deepEqual(ws.take('join').map((f) => f.room), ['lobby', 'dev']);
    ws.receive({ type: 'joined', room: 'lobby', epoch: 'e1', members: [], messages: [], complete: true });
    ws.receive({ type: 'error', code, message: 'later', ref: 'join', retry_after: 1.5 });
    assert.ok(t.core.rooms.has('dev'), 'the room is kept');
    assert.deepEqual(t.named('joinRefused'), []);
    t.clock.advance(1400);
    assert.deepEqual(ws.take('join'), []);
    t.clock.advance(200);
    assert.deepEqual(ws.sent.filter((f) => f.type === 'join'), [{ type: 'join', room: 'dev' }]);
    answerJoins(ws);
    assert.equal(t.core.rooms.get('dev').joinedHere, true);
  }
});

test('a join refused for good forgets the room and says so', () => {
  const t = makeCore();
  const ws = welcomed(t, ['lobby']);
  ws.receive({ type: 'error', code: 'forbidden_room', message: 'no', ref: 'join' });
  assert.equal(t.core.rooms.has('lobby'), false);
  assert.equal(t.named('joinRefused')[0][1], 'lobby');
});

test('leaves share the bucket; a room left before its join went out is not joined', () => {
  const pacer = new JoinPacer({ messages: 1, per: 1, burst: 2 }, 0);
  pacer.join('a');
  pacer.join('b');
  pacer.join('a');
  assert.deepEqual(pacer.queue.map((op) => op.room), ['a', 'b']);
  assert.equal(pacer.next(0).wait, 0);
  pacer.take(0);
  assert.ok(pacer.next(0).wait > 0, 'a burst of 2 leaves 1 for the client: one token margin');
  pacer.leave('b');
  assert.deepEqual(pacer.queue, [{ type: 'leave', room: 'b' }]);
  assert.equal(pacer.answered('join', 'a'), 'a');
  assert.equal(pacer.answered('join', 'a'), null);
});

test('rooms the session still holds but were left meanwhile are left after welcome', () => {
  const t = makeCore();
  const ws = welcomed(t, ['lobby'], { rooms: ['lobby', 'old'] });
  assert.deepEqual(ws.take('leave'), [{ type: 'leave', room: 'old' }]);
  ws.receive({ type: 'error', code: 'unavailable', message: 'later', ref: 'leave', retry_after: 1 });
  t.clock.advance(1000);
  assert.deepEqual(ws.take('leave'), [{ type: 'leave', room: 'old' }]);
});
