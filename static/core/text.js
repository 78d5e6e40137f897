// A message's text cut into what the view shows differently: plain text, links
// (http and https only) and mentions of the reader's own nick. DOM-free: the view
// turns each piece into a text node, an <a> or a <mark>, never into HTML.

import { nickKey } from './nick.js';

// A link runs from its scheme to the next white space; what a sentence puts after it
// (a full stop, a closing quote or bracket) is trimmed below.
const LINK_RE = /\bhttps?:\/\/[^\s<>"]+/giu;
const TRAILING_RE = /[.,;:!?'"\u2019\u201d*_]+$/u;
// A run of nick characters (contract: letters, digits, "_", "-", "."), optionally
// after an "@".
const WORD_RE = /@?[\p{L}\p{N}_.-]+/gu;

/** The URL a candidate names, or null: only http and https, and only what URL can parse. */
export function linkTarget(candidate) {
  let url;
  try {
    url = new URL(candidate);
  } catch {
    return null;
  }
  return url.protocol === 'http:' || url.protocol === 'https:' ? url.href : null;
}

// A ")" that closes nothing inside the link belongs to the sentence: "(see https://x/a)".
function trimLink(raw) {
  let s = raw;
  for (;;) {
    const before = s;
    s = s.replace(TRAILING_RE, '');
    if (s.endsWith(')') && count(s, '(') < count(s, ')')) s = s.slice(0, -1);
    if (s === before) return s;
  }
}

const count = (s, ch) => s.split(ch).length - 1;

/**
 * How much of a word of a message names `me` (compared as the server compares nicks),
 * as a length from its start, or 0. A sentence's full stop or hyphen after the nick is
 * not part of it: "alice." names alice, a nick "j.doe" keeps its dot.
 */
export function mentionLength(word, me) {
  if (!me) return 0;
  const key = nickKey(me);
  const at = word.startsWith('@') ? 1 : 0;
  if (nickKey(word.slice(at)) === key) return word.length;
  const bare = word.replace(/[._-]+$/u, '');
  return bare.length > at && nickKey(bare.slice(at)) === key ? bare.length : 0;
}

export const isMention = (word, me) => mentionLength(word, me) > 0;

function mentions(text, me, out) {
  let last = 0;
  if (me) {
    for (const m of text.matchAll(WORD_RE)) {
      const length = mentionLength(m[0], me);
      if (!length) continue;
      if (m.index > last) out.push({ kind: 'text', text: text.slice(last, m.index) });
      out.push({ kind: 'mention', text: m[0].slice(0, length) });
      last = m.index + length;
    }
  }
  if (last < text.length) out.push({ kind: 'text', text: text.slice(last) });
}

/**
 * The pieces of `text`, in order: {kind: 'text', text}, {kind: 'link', text, href} and
 * {kind: 'mention', text}. Joined, their texts are `text` exactly.
 */
export function pieces(text, me = null) {
  const out = [];
  let last = 0;
  for (const m of String(text).matchAll(LINK_RE)) {
    const raw = trimLink(m[0]);
    const href = linkTarget(raw);
    if (!href || raw.length <= m[0].indexOf('//') + 2) continue;
    mentions(text.slice(last, m.index), me, out);
    out.push({ kind: 'link', text: raw, href });
    last = m.index + raw.length;
  }
  mentions(String(text).slice(last), me, out);
  return out;
}

/** Whether `text` mentions `me` anywhere outside a link. */
export const mentionsMe = (text, me) => pieces(text, me).some((p) => p.kind === 'mention');
