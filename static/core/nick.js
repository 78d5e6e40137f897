// Nicks as the server sees them (chat/protocol.py nick_key): NFKC, full Unicode case
// folding, NFKC again. Two spellings are the same person exactly when their keys match.
//
// JavaScript has no casefold. Per code point, toUpperCase() then toLowerCase() gives
// the full folding (ß -> SS -> ss, ſ -> S -> s, ϐ -> Β -> β, ᾈ -> ἈΙ -> ἀι) for every code
// point but the few below; checked against Python's str.casefold over all of Unicode
// (docs/client-page.md). It runs per code point so that toLowerCase's context rule for
// a final sigma never applies: casefold maps every sigma to σ.

export const NICK_RE = /^[\p{L}\p{N}_.-]{1,32}$/u;

const EXCEPTIONS = new Map([
  [0x0131, '\u0131'], // dotless ı folds to itself, not to i (upper-then-lower would merge them)
  [0x1e9e, 'ss'],     // capital ẞ: its toUpperCase is itself, and lower would stop at ß
]);

function foldCodePoint(ch) {
  const cp = ch.codePointAt(0);
  const special = EXCEPTIONS.get(cp);
  if (special !== undefined) return special;
  // Cherokee folds to its capitals, the only script that folds upwards.
  if (cp >= 0xab70 && cp <= 0xabbf) return String.fromCodePoint(cp - 0xab70 + 0x13a0);
  if (cp >= 0x13f8 && cp <= 0x13fd) return String.fromCodePoint(cp - 8);
  if (cp >= 0x13a0 && cp <= 0x13f5) return ch;
  return ch.toUpperCase().toLowerCase();
}

/** Full Unicode case folding (Python's str.casefold). */
export function casefold(s) {
  let out = '';
  for (const ch of String(s)) out += foldCodePoint(ch);
  return out;
}

/** What nicks are compared by: NFKC, casefold, NFKC (casefold can leave NFKC). */
export const nickKey = (n) => casefold(String(n).normalize('NFKC')).normalize('NFKC');

export const sameNick = (a, b) => a != null && b != null && nickKey(a) === nickKey(b);

/** Members in the server's order: by their folded form. */
export const byNickKey = (a, b) => {
  const ka = nickKey(a);
  const kb = nickKey(b);
  return ka < kb ? -1 : ka > kb ? 1 : 0;
};

/** Message lengths as the server counts them: code points, not UTF-16 units. */
export const codePoints = (s) => [...s].length;
