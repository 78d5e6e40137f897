import assert from 'node:assert/strict';
import { test } from 'node:test';

import { counts, shouldNotify, tabTitle } from '../../static/core/attention.js';

test('a message counts as unread only when the reader cannot see it', () => {
  const base = { own: false, shown: true, hidden: false, mention: false };
  assert.deepEqual(counts(base), { unread: 0, mention: 0 });
  assert.deepEqual(counts({ ...base, shown: false }), { unread: 1, mention: 0 });
  assert.deepEqual(counts({ ...base, hidden: true, mention: true }), { unread: 1, mention: 1 });
  assert.deepEqual(counts({ ...base, hidden: true, own: true, mention: true }), { unread: 0, mention: 0 });
  assert.deepEqual(counts({ ...base, shown: false, replay: true }), { unread: 0, mention: 0 });
});

test('the title carries the unread count, and mentions when there are some', () => {
  assert.equal(tabTitle('lobby', 0, 0), '#lobby – Chat');
  assert.equal(tabTitle('lobby', 3, 0), '(3) #lobby – Chat');
  assert.equal(tabTitle('lobby', 3, 1), '(3, @1) #lobby – Chat');
  assert.equal(tabTitle(null, 2, 0), '(2) Chat');
});

test('a notification only for a mention while hidden, opted in and granted', () => {
  const yes = { own: false, mention: true, hidden: true, optedIn: true, permission: 'granted' };
  assert.equal(shouldNotify(yes), true);
  for (const change of [{ own: true }, { mention: false }, { hidden: false }, { optedIn: false },
    { permission: 'default' }, { permission: 'denied' }, { replay: true }]) {
    assert.equal(shouldNotify({ ...yes, ...change }), false, JSON.stringify(change));
  }
});
