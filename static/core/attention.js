// What asks for the reader's attention: the unread and mention counts of a room, the
// tab's title and whether a desktop notification is shown. Pure: the view passes in
// what the document and the Notification API say.

/**
 * Whether a message counts as unread, and as a mention: only messages from others,
 * arriving in a room the reader is not looking at (another room, or a hidden tab).
 * `replay`: part of a `joined` or `history` answer, old news that is not counted.
 */
export function counts({ own, shown, hidden, mention, replay = false }) {
  const unseen = !own && !replay && (!shown || hidden);
  return { unread: unseen ? 1 : 0, mention: unseen && mention ? 1 : 0 };
}

/** The tab's title: "(3) #lobby – Chat", with mentions "(3, @1) #lobby – Chat". */
export function tabTitle(room, unread, mentions) {
  const base = room ? `#${room} – Chat` : 'Chat';
  if (!unread && !mentions) return base;
  return mentions ? `(${unread}, @${mentions}) ${base}` : `(${unread}) ${base}`;
}

/**
 * A desktop notification only for a mention by someone else while the tab is hidden,
 * and only when the reader asked for them and the browser allowed it.
 */
export function shouldNotify({ own, mention, hidden, optedIn, permission, replay = false }) {
  return !own && !replay && mention && hidden && optedIn && permission === 'granted';
}
