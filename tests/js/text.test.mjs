import assert from 'node:assert/strict';
import { test } from 'node:test';

import { isMention, linkTarget, mentionsMe, pieces } from '../../static/core/text.js';

const kinds = (text, me) => pieces(text, me).map((p) => [p.kind, p.text]);

test('http and https links are cut out, the sentence around them is not', () => {
  assert.deepEqual(kinds('see https://example.com/a?b=1#c.'), [
    ['text', 'see '], ['link', 'https://example.com/a?b=1#c'], ['text', '.'],
  ]);
  assert.deepEqual(kinds('(docs: http://x.org/wiki/Foo_(bar)) ok'), [
    ['text', '(docs: '], ['link', 'http://x.org/wiki/Foo_(bar)'], ['text', ') ok'],
  ]);
  assert.deepEqual(kinds('"https://a.io/x", then'), [
    ['text', '"'], ['link', 'https://a.io/x'], ['text', '", then'],
  ]);
  assert.equal(pieces('two: https://a.io and http://b.io!').filter((p) => p.kind === 'link').length, 2);
});

test('only http and https become links, and only what URL can parse', () => {
  for (const text of ['javascript:alert(1)', 'data:text/html,x', 'ftp://a.io', 'file:///etc/passwd',
    'https://', 'http://[bad', 'JAVASCRIPT://%0aalert(1)']) {
    assert.ok(pieces(text).every((p) => p.kind === 'text'), text);
  }
  assert.equal(linkTarget('javascript:alert(1)'), null);
  assert.equal(linkTarget('HTTPS://Example.COM/x'), 'https://example.com/x');
  const [link] = pieces('https://a.io/<script>');
  assert.equal(link.text, 'https://a.io/');
});

test('the pieces always join back into the text', () => {
  for (const text of ['', 'plain', 'a https://x.y/z b', 'alice: hi @Alice, https://a.b/alice alice.',
    'ß https://x.org/(a)) ((https://y.org)']) {
    assert.equal(pieces(text, 'alice').map((p) => p.text).join(''), text);
  }
});

test('mentions compare as the server compares nicks, with or without @', () => {
  assert.ok(isMention('Alice', 'alice'));
  assert.ok(isMention('@ALICE', 'alice'));
  assert.ok(isMention('STRASSE', 'straße'));
  assert.ok(isMention('ａｌｉｃｅ', 'alice')); // NFKC: full-width letters
  assert.ok(!isMention('alicex', 'alice'));
  assert.ok(!isMention('alice', null));
  assert.deepEqual(kinds('hi Alice, and alice. and malice', 'alice'), [
    ['text', 'hi '], ['mention', 'Alice'], ['text', ', and '], ['mention', 'alice'],
    ['text', '. and malice'],
  ]);
  assert.deepEqual(kinds('thanks @bob.', 'bob'), [['text', 'thanks '], ['mention', '@bob'], ['text', '.']]);
  // A nick with a dot in it keeps the dot.
  assert.deepEqual(kinds('hey j.doe!', 'j.doe'), [['text', 'hey '], ['mention', 'j.doe'], ['text', '!']]);
});

test('a nick inside a link is no mention', () => {
  assert.equal(mentionsMe('see https://example.com/alice', 'alice'), false);
  assert.equal(mentionsMe('alice: https://example.com/', 'alice'), true);
});
