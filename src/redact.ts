/**
 * What may be logged or published of a URL: never its user info (a broker password in
 * mqtt://user:secret@host) nor its query string or fragment (a signed download URL's token).
 * Bottom layer: the agent's logs and the fleet's retained update states both use it.
 */
export function redactUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    return '<unparsable URL>';
  }
  if (u.username || u.password) {
    u.username = u.username ? '***' : '';
    u.password = '';
  }
  const hidden = u.search || u.hash ? '?<redacted>' : '';
  u.search = '';
  u.hash = '';
  return `${u.toString()}${hidden}`;
}
