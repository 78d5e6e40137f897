import assert from 'node:assert/strict';
import { test } from 'node:test';

import { afterClose, backoffDelay, restartDelay } from '../../static/core/backoff.js';
import { makeCore, welcomed } from './fakes.mjs';

test('back-off windows double from 0.5 s to the 10 s cap, full jitter inside them', () => {
  const top = Array.from({ length: 10 }, (_, n) => backoffDelay(n, () => 1));
  assert.deepEqual(top, [500, 1000, 2000, 4000, 8000, 10000, 10000, 10000, 10000, 10000]);
  for (let n = 0; n < 100; n++) {
    const d = backoffDelay(n, Math.random);
    assert.ok(d >= 0 && d <= Math.min(10000, 500 * 2 ** n), `${n}: ${d}`);
  }
  assert.equal(backoffDelay(0, () => 0), 0);
  assert.ok(Number.isFinite(backoffDelay(1e6, () => 1)));
});

test('a restarting server (1001) is retried within 0.2 to 1.5 s; 4002 and 4003 stop', () => {
  assert.equal(restartDelay(() => 0), 200);
  assert.equal(restartDelay(() => 1), 1500);
  assert.equal(afterClose(1001), 'soon');
  assert.equal(afterClose(4002), 'park');
  assert.equal(afterClose(4003), 'park');
  for (const code of [1000, 1006, 1011, 4000, 4001]) assert.equal(afterClose(code), 'backoff');
});

test('the core waits out growing back-off windows and starts over after welcome', () => {
  const t = makeCore({ random: () => 1 });
  t.core.start();
  const delays = [];
  for (let i = 0; i < 4; i++) {
    t.socket().serverClose(1006);
    delays.push(t.core.retryAt - t.clock.t);
    assert.equal(t.core.phase, 'waiting');
    assert.equal(t.core.status().text, 'reconnecting');
    assert.match(t.core.status().detail, /^in \d+ s$/);
    const before = t.sockets.length;
    t.clock.advance(delays[i] - 1);
    assert.equal(t.sockets.length, before, 'not before the delay');
    t.clock.advance(1);
    assert.equal(t.sockets.length, before + 1);
  }
  assert.deepEqual(delays, [500, 1000, 2000, 4000]);
  const ws = t.socket();
  ws.open();
  ws.receive({ type: 'welcome', session: 's', nick: 'alice', rooms: [] });
  assert.equal(t.core.attempt, 0);
  ws.serverClose(4002);
  assert.equal(t.core.phase, 'parked');
  t.clock.advance(60_000);
  assert.equal(t.sockets.length, 5, 'a replaced session does not come back by itself');
});

test('close 1001 comes back soon, not after the back-off', () => {
  const t = makeCore({ random: () => 0 });
  welcomed(t);
  t.socket().serverClose(1001);
  t.clock.advance(200);
  assert.equal(t.sockets.length, 2);
});
