import assert from 'node:assert/strict';
import { test } from 'node:test';

import { byNickKey, casefold, codePoints, nickKey, sameNick } from '../../static/core/nick.js';

test('straße and STRASSE are one nick, as the server folds them', () => {
  assert.ok(sameNick('straße', 'STRASSE'));
  assert.ok(sameNick('Straße', 'strasse'));
  assert.ok(sameNick('STRAẞE', 'strasse')); // capital sharp s
  assert.equal(casefold('ẞ'), 'ss');
});

test('casefold gives what Python str.casefold gives where upper-then-lower would not', () => {
  assert.equal(casefold('ı'), 'ı'); // dotless i is not i
  assert.ok(!sameNick('ı', 'i'));
  assert.equal(casefold('İ'), 'i\u0307');
  assert.equal(casefold('ꭰ'), 'Ꭰ'); // Cherokee folds to capitals
  assert.equal(casefold('Ꭰ'), 'Ꭰ');
  assert.equal(casefold('ᏸ'), 'Ᏸ');
  assert.equal(casefold('ΟΔΟΣ'), 'οδοσ'); // every sigma to σ, no final-sigma rule
  assert.equal(casefold('οδος'), 'οδοσ');
  assert.equal(casefold('ſ'), 's');
  assert.equal(casefold('ᾈ'), 'ἀι');
});

test('nick keys apply NFKC before and after folding', () => {
  assert.ok(sameNick('ＡＬＩＣＥ', 'alice')); // fullwidth
  assert.ok(sameNick('\u212Aelvin', 'kelvin')); // Kelvin sign
  assert.ok(sameNick('ﬀ', 'FF'));
  assert.equal(nickKey('Alice'), 'alice');
  assert.ok(!sameNick('alice', null));
  assert.ok(!sameNick('alice', 'bob'));
});

test('members sort by their folded form, code points count characters', () => {
  assert.deepEqual(['bob', 'Alice', 'carol', 'ÄB'].sort(byNickKey), ['Alice', 'bob', 'carol', 'ÄB']);
  assert.equal(codePoints('😀a'), 2);
});
