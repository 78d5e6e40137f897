import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Outbox, RESEND_GAP, retryAfter } from '../../static/core/outbox.js';
import { answerJoins, makeCore, welcomed } from './fakes.mjs';

function ready() {
  const t = makeCore();
  const ws = welcomed(t);
  answerJoins(ws);
  ws.sent = [];
  return { t, ws };
}

for (const code of ['unavailable', 'rate_limited']) {
  test(`a say refused with ${code} stays pending and goes again with its cid after retry_after`, () => {
    const { t, ws } = ready();
    const entry = t.core.say('lobby', 'hello');
    const [first] = ws.take('say');
    assert.deepEqual(first, { type: 'say', room: 'lobby', text: 'hello', cid: entry.cid });
    ws.receive({ type: 'error', code, message: 'later', ref: entry.cid, retry_after: 2 });
    assert.deepEqual(t.named('sayFailed'), [], 'not shown as a failure');
    assert.deepEqual(t.named('sayRetrying').at(-1), ['sayRetrying', entry, code]);
    assert.ok(t.core.outbox.has(entry.cid));
    if (code === 'unavailable') {
      assert.equal(t.core.status().text, 'server unavailable, retrying');
      assert.equal(t.core.status().detail, 'in 2 s');
      assert.equal(t.core.status().trouble, true);
    }
    t.clock.advance(1990);
    assert.deepEqual(ws.take('say'), []);
    t.clock.advance(20);
    assert.deepEqual(ws.take('say'), [first], 'the same frame, the same cid');
    ws.receive({ type: 'ack', cid: entry.cid, room: 'lobby', id: 1, ts: 5 });
    assert.equal(t.core.outbox.has(entry.cid), false);
    assert.equal(t.named('settled').length, 1);
    assert.match(t.core.status().text, /^connected/);
  });
}

test('a say refused for good fails and the next one goes', () => {
  const { t, ws } = ready();
  const bad = t.core.say('lobby', 'x');
  const good = t.core.say('lobby', 'y');
  assert.equal(ws.take('say').length, 1);
  ws.receive({ type: 'error', code: 'text_invalid', message: 'no', ref: bad.cid });
  assert.equal(t.named('sayFailed').length, 1);
  t.clock.advance(RESEND_GAP);
  assert.deepEqual(ws.take('say').map((f) => f.cid), [good.cid]);
});

test('says are spaced, held until their room is joined, and re-sent on the next connection', () => {
  const t = makeCore();
  const ws = welcomed(t);
  const a = t.core.say('lobby', 'a');
  const b = t.core.say('lobby', 'b');
  assert.deepEqual(ws.take('say'), [], 'lobby not joined on this connection yet');
  answerJoins(ws);
  assert.deepEqual(ws.take('say').map((f) => f.cid), [a.cid]);
  t.clock.advance(RESEND_GAP);
  assert.deepEqual(ws.take('say').map((f) => f.cid), [b.cid]);
  ws.receive({ type: 'ack', cid: a.cid, room: 'lobby', id: 1, ts: 1 });
  ws.serverClose(1006);
  t.clock.advance(1000);
  const ws2 = t.socket();
  ws2.open();
  assert.deepEqual(ws2.take('hello'), [{ type: 'hello', nick: 'alice', session: 's1' }]);
  ws2.receive({ type: 'welcome', session: 's1', nick: 'alice', rooms: ['lobby'] });
  assert.deepEqual(ws2.take('join'), [{ type: 'join', room: 'lobby', since: 1, epoch: 'e1' }]);
  ws2.receive({ type: 'joined', room: 'lobby', epoch: 'e1', members: ['alice'], messages: [], complete: true });
  assert.deepEqual(ws2.take('say').map((f) => f.cid), [b.cid], 'only the unacknowledged one');
});

test('the outbox pauses every say until the latest retry_after, in order', () => {
  const box = new Outbox();
  const a = box.add('a', 'lobby', 'a');
  box.add('b', 'lobby', 'b');
  const joined = () => true;
  assert.equal(box.next(0, joined).entry, a);
  box.sent(a, 0);
  box.later(a, 'unavailable', 3000, 100);
  const next = box.next(200, joined);
  assert.equal(next.entry, a, 'the refused one first: order kept');
  assert.equal(next.wait, 2900);
  assert.equal(retryAfter({ retry_after: 0.5 }), 500);
  assert.equal(retryAfter({}), 1000);
  assert.equal(box.next(0, () => false), null);
});

test('the outbox survives a reload: a snapshot taken back is sent again with the same cids', () => {
  const { t, ws } = ready();
  const a = t.core.say('lobby', 'one');
  t.core.say('dev', 'two'); // a room the page is not in: kept, the room is joined again
  ws.take('say');
  const saved = JSON.parse(JSON.stringify(t.core.outbox.snapshot()));
  assert.deepEqual(saved.map((e) => e.cid), [a.cid, 'c2']);
  assert.ok(t.named('outboxChanged').length >= 2);

  const after = makeCore();
  after.core.addRoom('lobby');
  const restored = after.core.restorePending([...saved, { cid: 5 }, null, { cid: 'x', room: 'lobby', text: '' }]);
  assert.equal(restored.length, 2, 'malformed entries are skipped');
  assert.deepEqual([...after.core.rooms.keys()], ['lobby', 'dev']);
  assert.equal(after.named('sayQueued').length, 2);
  assert.equal(after.core.hasPending(), true);
  after.core.start();
  const ws2 = after.socket();
  ws2.open();
  ws2.receive({ type: 'welcome', session: 's', nick: 'alice', rooms: [] });
  answerJoins(ws2);
  after.clock.advance(1000);
  assert.deepEqual(ws2.take('say').map((f) => [f.cid, f.room, f.text]), [
    [a.cid, 'lobby', 'one'], ['c2', 'dev', 'two'],
  ]);
  // The replay of `joined` may already hold one that was stored before the reload.
  ws2.receive({ type: 'ack', cid: a.cid, room: 'lobby', id: 1, ts: 1 });
  ws2.receive({ type: 'ack', cid: 'c2', room: 'dev', id: 1, ts: 1 });
  assert.equal(after.core.hasPending(), false);
  assert.deepEqual(after.core.outbox.snapshot(), []);
});

test('a message stored before the reload settles from the replay and is not sent again', () => {
  const t = makeCore();
  t.core.addRoom('lobby');
  t.core.restorePending([{ cid: 'k1', room: 'lobby', text: 'hi' }]);
  const ws = welcomed(t, []);
  const [join] = ws.take('join');
  ws.receive({ type: 'joined', room: join.room, epoch: 'e1', members: ['alice'], complete: true,
    messages: [{ type: 'message', room: 'lobby', id: 7, nick: 'alice', text: 'hi', ts: 1, cid: 'k1' }] });
  t.clock.advance(1000);
  assert.deepEqual(ws.take('say'), []);
  assert.equal(t.core.hasPending(), false);
});
