import assert from 'node:assert/strict';
import { test } from 'node:test';

import { Room } from '../../static/core/room.js';
import { makeCore, welcomed } from './fakes.mjs';

const msg = (id, extra = {}) => ({ type: 'message', room: 'lobby', id, nick: 'bob', text: `m${id}`, ts: id, cid: null, ...extra });

test('each id shows once per epoch; a new epoch starts the ids over', () => {
  const room = new Room('lobby');
  assert.deepEqual(room.joinFrame(), { type: 'join', room: 'lobby' });
  assert.deepEqual(room.onJoined({ epoch: 'e1', members: [], complete: true }), { reset: false, gap: false });
  assert.deepEqual([1, 2, 2, 1, 3].map((id) => room.accept(id)), [true, true, false, false, true]);
  assert.deepEqual(room.joinFrame(), { type: 'join', room: 'lobby', since: 3, epoch: 'e1' });
  assert.deepEqual(room.onJoined({ epoch: 'e1', complete: false }), { reset: false, gap: true });
  assert.deepEqual(room.onJoined({ epoch: 'e2', complete: false }), { reset: true, gap: false });
  assert.equal(room.maxId, 0);
  assert.equal(room.accept(1), true, 'id 1 of the new epoch is a new message');
});

test('a replay overlapping live messages shows each message once', () => {
  const t = makeCore();
  const ws = welcomed(t);
  ws.receive({ type: 'joined', room: 'lobby', epoch: 'e1', members: [], messages: [msg(1), msg(2)], complete: true });
  ws.receive(msg(2));
  ws.receive(msg(3));
  ws.serverClose(1006);
  t.clock.advance(1000);
  const ws2 = t.socket();
  ws2.open();
  ws2.receive({ type: 'welcome', session: 's1', nick: 'alice', rooms: ['lobby'] });
  assert.deepEqual(ws2.take('join'), [{ type: 'join', room: 'lobby', since: 3, epoch: 'e1' }]);
  ws2.receive({ type: 'joined', room: 'lobby', epoch: 'e1', members: [], messages: [msg(3), msg(4)], complete: true });
  const shown = [
    ...t.named('joined').flatMap(([, , { items }]) => items.map((i) => i.message.id)),
    ...t.named('message').map(([, , item]) => item.message.id),
  ].sort();
  assert.deepEqual(shown, [1, 2, 3, 4]);
});

test('our own message coming back settles the pending line instead of showing twice', () => {
  const t = makeCore();
  const ws = welcomed(t);
  ws.receive({ type: 'joined', room: 'lobby', epoch: 'e1', members: [], messages: [], complete: true });
  const entry = t.core.say('lobby', 'hi');
  ws.receive(msg(1, { nick: 'ALICE', text: 'hi', cid: entry.cid }));
  const [[, , item]] = t.named('message');
  assert.equal(item.entry, entry);
  ws.receive({ type: 'ack', cid: entry.cid, room: 'lobby', id: 1, ts: 1 });
  assert.deepEqual(t.named('settled'), [], 'the ack finds it settled already');
});

test('presence keeps members sorted by folded nick', () => {
  const room = new Room('lobby');
  room.members = ['alice'];
  assert.equal(room.presence({ event: 'join', nick: 'Bob' }), true);
  assert.equal(room.presence({ event: 'join', nick: 'ALICE' }), false);
  assert.equal(room.presence({ event: 'join', nick: 'Ärger' }), true);
  assert.deepEqual(room.members, ['alice', 'Bob', 'Ärger']);
  assert.equal(room.presence({ event: 'leave', nick: 'BOB', reason: 'left' }), true);
  assert.deepEqual(room.members, ['alice', 'Ärger']);
});

test('Alt+Up and Alt+Down go to the neighbouring room, wrapping around', async () => {
  const { neighbourRoom } = await import('../../static/core/room.js');
  const names = ['lobby', 'dev', 'ops'];
  assert.equal(neighbourRoom(names, 'lobby', 1), 'dev');
  assert.equal(neighbourRoom(names, 'ops', 1), 'lobby');
  assert.equal(neighbourRoom(names, 'lobby', -1), 'ops');
  assert.equal(neighbourRoom(['lobby'], 'lobby', 1), null);
  assert.equal(neighbourRoom([], null, 1), null);
  assert.equal(neighbourRoom(names, null, -1), 'lobby');
});

test('presence becomes one quiet line, with the reason for a lost connection', async () => {
  const { presenceLine } = await import('../../static/core/room.js');
  assert.equal(presenceLine({ event: 'join', nick: 'bob' }), 'bob joined');
  assert.equal(presenceLine({ event: 'leave', nick: 'bob', reason: 'left' }), 'bob left');
  assert.equal(presenceLine({ event: 'leave', nick: 'bob', reason: 'timeout' }), 'bob left (connection lost)');
  assert.equal(presenceLine({ event: 'leave', nick: 'bob', reason: 'closed' }), 'bob left (disconnected)');
});
