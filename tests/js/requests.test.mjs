import assert from 'node:assert/strict';
import { test } from 'node:test';

import { answerJoins, makeCore, welcomed } from './fakes.mjs';

const page = (room, ids, more) => ({
  type: 'history', room, more,
  messages: ids.map((id) => ({ type: 'message', room, id, nick: 'bob', text: `m${id}`, ts: id, cid: null })),
});

function twoRoomsWithOlderMessages() {
  const t = makeCore();
  const ws = welcomed(t, ['lobby', 'dev']);
  for (const join of ws.take('join')) {
    ws.receive({
      type: 'joined', room: join.room, epoch: 'e1', members: [], complete: true,
      messages: [{ type: 'message', room: join.room, id: 60, nick: 'bob', text: 'x', ts: 1, cid: null }],
    });
  }
  assert.equal(t.core.loadOlder('lobby'), true);
  assert.equal(t.core.loadOlder('dev'), true);
  assert.deepEqual(ws.take('history').map((f) => [f.room, f.before]), [['lobby', 60], ['dev', 60]]);
  return { t, ws };
}

test('a failed history request resets only its own room', () => {
  const { t, ws } = twoRoomsWithOlderMessages();
  ws.receive({ type: 'error', code: 'not_joined', message: 'no', ref: 'history' });
  assert.equal(t.core.rooms.get('lobby').loadingOlder, false);
  assert.equal(t.core.rooms.get('dev').loadingOlder, true, 'its answer is still to come');
  ws.receive(page('dev', [58, 59], true));
  assert.equal(t.core.rooms.get('dev').loadingOlder, false);
  assert.equal(t.core.rooms.get('dev').minId, 58);
});

test('a history request answered unavailable is asked again after retry_after', () => {
  const { t, ws } = twoRoomsWithOlderMessages();
  ws.receive({ type: 'error', code: 'unavailable', message: 'later', ref: 'history', retry_after: 1 });
  assert.equal(t.core.rooms.get('lobby').loadingOlder, true);
  t.clock.advance(1000);
  assert.deepEqual(ws.take('history').map((f) => f.room), ['lobby']);
  ws.receive(page('dev', [], false));
  ws.receive(page('lobby', [59], true));
  assert.equal(t.core.rooms.get('lobby').loadingOlder, false);
  assert.equal(t.core.rooms.get('dev').historyDone, true);
});

test('hello answered unavailable is sent again after retry_after, and the person is told', () => {
  const t = makeCore();
  t.core.addRoom('lobby');
  t.core.start();
  const ws = t.socket();
  ws.open();
  assert.equal(ws.take('hello').length, 1);
  ws.receive({ type: 'error', code: 'unavailable', message: 'no redis', ref: 'hello', retry_after: 2 });
  assert.equal(t.core.status().text, 'server unavailable, retrying');
  assert.equal(t.core.status().detail, 'in 2 s');
  assert.deepEqual(t.named('helloRefused'), [], 'not a refused nick');
  t.clock.advance(1999);
  assert.deepEqual(ws.take('hello'), []);
  t.clock.advance(1);
  assert.deepEqual(ws.take('hello'), [{ type: 'hello', nick: 'alice' }]);
  ws.receive({ type: 'welcome', session: 's1', nick: 'alice', rooms: [] });
  assert.equal(t.core.status().text, 'connected');
  answerJoins(ws);
  assert.equal(t.core.rooms.get('lobby').joinedHere, true);
});

test('a refused nick waits for the person; a stray unavailable is not a notice', () => {
  const t = makeCore();
  t.core.start();
  const ws = t.socket();
  ws.open();
  ws.receive({ type: 'error', code: 'nick_taken', message: 'taken', ref: 'hello' });
  assert.equal(t.core.phase, 'open');
  assert.equal(t.named('helloRefused').length, 1);
  t.core.useNick('alice2');
  assert.deepEqual(ws.take('hello').at(-1), { type: 'hello', nick: 'alice2' });
  ws.receive({ type: 'error', code: 'unavailable', message: 'x', ref: null, retry_after: 1 });
  assert.deepEqual(t.named('notice'), []);
});
