// The chat page (contract version 1, PROTOCOL.md sections 3 to 5): plain ES modules,
// no build step, no third-party code. This entry gives the DOM-free core
// (core/client.js) the browser's clock, timers, randomness and WebSocket, and joins it
// to the one module that touches the DOM (view.js).

import { ChatCore } from './core/client.js';
import { View, tabSession } from './view.js';

function newCid() {
  if (crypto.randomUUID) return crypto.randomUUID();
  // randomUUID exists only in secure contexts; plain http on a LAN address lacks it.
  const b = crypto.getRandomValues(new Uint8Array(16));
  b[6] = (b[6] & 0x0f) | 0x40;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

// The server names its routes from the app's root (`/ws`); the page is served at that
// root, so they are resolved against the page, not the host: under a path prefix (a
// proxy's `location /chat/`) `/ws` is `/chat/ws`.
function wsUrl(path) {
  const url = new URL(`.${path.startsWith('/') ? path : `/${path}`}`, location.href);
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

const PROBE_TIMEOUT = 1500; // ms: a probe on a dead network must not linger

// Whether the server answers its health check: far cheaper than an upgrade, and it
// starts no session. Relative for the same reason as the socket.
function probe(done) {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), PROBE_TIMEOUT);
  fetch(new URL('healthz', location.href), { cache: 'no-store', signal: abort.signal })
    .then((r) => done(r.ok), () => done(false))
    .finally(() => clearTimeout(timer));
}

const data = document.body.dataset;
// Token mode (`auth.secret` set on the server): `hello` carries a token, whose subject
// is the nick, instead of a nick the person picks.
const tokenMode = data.auth === 'token';
const url = wsUrl(data.wsPath || '/ws');

const core = new ChatCore({
  env: {
    // Monotonic: a wall clock set back or forward must not look like silence.
    now: () => performance.now(),
    setTimeout: (fn, ms) => setTimeout(fn, ms),
    clearTimeout: (id) => clearTimeout(id),
    random: Math.random,
    openSocket: () => new WebSocket(url),
    probe,
    newCid,
    log: (...args) => console.error(...args),
  },
  tokenMode,
  maxText: Number.parseInt(data.maxText, 10) || 2000,
  session: tabSession(),
  offline: !navigator.onLine,
});
const view = new View(core, { tokenMode });
core.ui = view;
view.start();
