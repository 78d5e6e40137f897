import assert from 'node:assert/strict';
import { test } from 'node:test';

import { PROBE_EVERY, afterProbeDelay, probeDelay } from '../../static/core/backoff.js';
import { WELCOME, makeCore, welcomed } from './fakes.mjs';

// A probe the test answers by hand: each call is recorded with its callback.
function withProbe(options = {}) {
  const probes = [];
  const t = makeCore({ ...options });
  t.core.env.probe = (done) => probes.push(done);
  return { ...t, probes };
}

test('the status says signed out until welcome, then connected with the RTT beside it', () => {
  const t = makeCore({ nick: null });
  t.core.start();
  assert.equal(t.core.status().text, 'connecting…');
  t.socket().open();
  assert.deepEqual([t.core.status().text, t.core.status().detail], ['signed out', '']);
  t.core.useNick('alice');
  assert.equal(t.core.status().text, 'connecting…');
  t.socket().receive({ ...WELCOME });
  assert.equal(t.core.status().text, 'connected');
  t.socket().receive({ type: 'pong', t: t.clock.t - 7 });
  assert.deepEqual([t.core.status().text, t.core.status().detail], ['connected', 'RTT 7 ms']);
});

test('a refused nick leaves the status at signed out', () => {
  const t = makeCore();
  t.core.start();
  t.socket().open();
  t.socket().receive({ type: 'error', code: 'nick_taken', message: 'taken', ref: 'hello' });
  assert.equal(t.core.status().text, 'signed out');
  assert.equal(t.core.status().reconnect, false);
});

test('a refused token says so and offers no reconnect; a new token tries again', () => {
  const t = makeCore({ tokenMode: true, token: 'bad', nick: null });
  t.core.start();
  t.socket().open();
  t.socket().receive({ type: 'error', code: 'unauthorized', message: 'no', ref: 'hello' });
  t.socket().serverClose(4003);
  const s = t.core.status();
  assert.equal(s.text, 'signed out: token refused');
  assert.equal(s.reconnect, false);
  assert.equal(s.trouble, true);
  t.clock.advance(60_000);
  assert.equal(t.sockets.length, 1, 'no retry of a refused token');
  t.core.useToken('good');
  assert.equal(t.sockets.length, 2);
  assert.equal(t.core.status().text, 'connecting…');
});

test('the live text stays the same while waiting and trying again; only the detail counts', () => {
  const t = makeCore({ random: () => 1 });
  welcomed(t);
  t.socket().serverClose(1006);
  const texts = new Set();
  for (let i = 0; i < 5; i++) {
    texts.add(t.core.status().text);
    t.clock.advance(t.core.retryAt - t.clock.t);
    texts.add(t.core.status().text);
    t.socket().serverClose(1006);
  }
  assert.deepEqual([...texts], ['reconnecting']);
});

test('probes are jittered around one second', () => {
  assert.equal(probeDelay(() => 0), PROBE_EVERY * 0.75);
  assert.equal(probeDelay(() => 1), PROBE_EVERY * 1.25);
  assert.ok(afterProbeDelay(() => 1) <= 500);
});

test('a wide back-off window is cut short within about 2 s of the server answering healthz', () => {
  const t = withProbe({ random: () => 1 });
  welcomed(t);
  t.core.attempt = 10; // a long outage: the window is at its cap
  t.socket().serverClose(1006);
  assert.equal(t.core.retryAt - t.clock.t, 10_000);
  t.clock.advance(1250);
  assert.equal(t.probes.length, 1);
  t.probes[0](false); // still down
  t.clock.advance(1250);
  assert.equal(t.probes.length, 2);
  const upAt = t.clock.t;
  t.probes[1](true);
  t.clock.advance(500);
  assert.equal(t.sockets.length, 2, 'connected once the probe found the server');
  assert.ok(t.clock.t - upAt <= 2000);
  assert.equal(t.core.phase, 'connecting');
});

test('healthz up while the socket keeps failing does not become a reconnect loop', () => {
  const t = withProbe({ random: () => 1 });
  welcomed(t);
  t.core.attempt = 10;
  t.socket().serverClose(1006);
  t.clock.advance(1250);
  t.probes.shift()(true); // up: armed after a normal attempt failed
  t.clock.advance(500);
  assert.equal(t.sockets.length, 2);
  t.socket().serverClose(1006); // the upgrade fails anyway
  for (let i = 0; i < 5; i++) {
    t.clock.advance(1250);
    t.probes.shift()?.(true);
  }
  assert.equal(t.sockets.length, 2, 'probes answering up do not reconnect again');
  t.clock.advance(1250);
  t.probes.shift()(false); // the server went away ...
  t.clock.advance(1250);
  t.probes.shift()(true); // ... and came back: that one counts
  t.clock.advance(500);
  assert.equal(t.sockets.length, 3);
});

test('no probe while offline, parked or connected; a stale answer is ignored', () => {
  const t = withProbe({ random: () => 1 });
  welcomed(t);
  t.clock.advance(5000);
  assert.equal(t.probes.length, 0, 'connected: nothing to probe');
  t.core.attempt = 10;
  t.socket().serverClose(1006);
  t.clock.advance(1250);
  const stale = t.probes.shift();
  t.core.reconnectNow();
  stale(true);
  assert.equal(t.sockets.length, 2, 'the answer of an old wait does nothing');
  t.socket().serverClose(4002);
  t.clock.advance(10_000);
  assert.equal(t.probes.length, 0, 'parked: no probe');
});
