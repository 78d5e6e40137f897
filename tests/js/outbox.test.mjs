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
      assert.equal(t.core.status().text, 'server unavailable, retrying in 2 s');
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
