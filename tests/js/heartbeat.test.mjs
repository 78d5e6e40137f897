import assert from 'node:assert/strict';
import { test } from 'node:test';

import { tickPeriod, watch } from '../../static/core/heartbeat.js';
import { makeCore, welcomed } from './fakes.mjs';

const HB = { interval: 10, timeout: 30 };

test('watch: alive until timeout without a frame, then dead', () => {
  const base = { lastTickAt: 0, period: 250, lastFrameAt: 0, heartbeat: HB };
  assert.equal(watch({ ...base, now: 250, lastTickAt: 0 }).verdict, 'alive');
  assert.equal(watch({ ...base, now: 30_000, lastTickAt: 29_750 }).verdict, 'alive');
  assert.equal(watch({ ...base, now: 30_001, lastTickAt: 29_751 }).verdict, 'dead');
});

test('watch: a tick that comes far too late means timers slept; the server gets time to answer', () => {
  const { verdict, lastFrameAt } = watch({
    now: 100_000, lastTickAt: 1000, period: 250, lastFrameAt: 0, heartbeat: HB,
  });
  assert.equal(verdict, 'asleep');
  assert.equal(lastFrameAt, 100_000 - 30_000 + 10_000); // a heartbeat interval's grace
  assert.equal(tickPeriod({ interval: 0.3 }), 75);
  assert.equal(tickPeriod(HB), 250);
});

test('the page pings every interval and drops a server silent for timeout', () => {
  const t = makeCore();
  const ws = welcomed(t);
  ws.take('ping');
  t.clock.advance(10_000);
  assert.equal(ws.take('ping').length, 1);
  ws.receive({ type: 'pong', t: t.clock.t - 12, ts: 0 });
  assert.equal(t.core.status().text, 'connected');
  assert.equal(t.core.status().detail, 'RTT 12 ms');
  t.clock.advance(29_900); // 29.9 s after the pong
  assert.equal(ws.closed, false);
  t.clock.advance(400);
  assert.equal(ws.closed, true);
  assert.equal(t.core.status().text, 'server not responding');
  assert.equal(t.core.phase, 'waiting');
});

test('settings switches the ping interval and the dead-server timer at once', () => {
  const t = makeCore();
  const ws = welcomed(t);
  t.clock.advance(5000);
  ws.take('ping');
  ws.receive({
    type: 'settings', heartbeat: { interval: 1, timeout: 3 },
    limits: { text: 500 },
  });
  assert.deepEqual(t.core.heartbeat, { interval: 1, timeout: 3 });
  t.clock.advance(2000);
  assert.equal(ws.take('ping').length, 2, 'one ping a second from now on');
  assert.equal(ws.closed, false);
  t.clock.advance(1300); // 3.3 s since the settings frame, the last frame heard
  assert.equal(ws.closed, true, 'dead after the new 3 s timeout, not the old 30 s');
  assert.deepEqual(t.named('limits').at(-1), ['limits', { text: 500 }]);
  assert.equal(t.core.maxText, 500);
});

test('settings with a longer timeout keeps a slow server alive past the old one', () => {
  const t = makeCore();
  const ws = welcomed(t, ['lobby'], { heartbeat: { interval: 1, timeout: 3 } });
  ws.receive({ type: 'settings', heartbeat: { interval: 2, timeout: 10 }, limits: { text: 2000 } });
  t.clock.advance(9000);
  assert.equal(ws.closed, false);
  t.clock.advance(1300);
  assert.equal(ws.closed, true);
});
