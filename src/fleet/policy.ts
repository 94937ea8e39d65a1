/**
 * Who may make a device fetch what (docs/FLEET.md, "What a job may name"). The signature protects
 * what is installed, not what is fetched: so before any byte is fetched, a job that came over MQTT
 * must name an http(s) URL under one of the device's `updates.allowUrls` prefixes (default: none,
 * so no job runs until the operator lists where bundles live), https unless `updates.allowHttp`,
 * never `file:`, never user info; every redirect is held to the same rule. A local caller (the
 * device's own CLI or API, source `local`) may name any file: or http(s) URL.
 */
import { redactUrl } from '../redact.js';
import { ErrorCodes, SetokimError } from '../errors.js';

/** Where a job came from: `mqtt` (anyone who may publish on the job topic) or `local` (the device itself). */
export type JobSource = 'mqtt' | 'local';

/** Redirects followed at most, each one checked like the job's own URL. */
export const MAX_REDIRECTS = 5;

export interface UrlPolicyOptions {
  /** URL prefixes a job from MQTT may name (http(s), no user info, query or fragment). */
  allowUrls?: readonly string[];
  /** Lets jobs from MQTT name http: URLs under allowUrls (default: https only). */
  allowHttp?: boolean;
}

/** Why `prefix` cannot be an allowUrls entry, or undefined when it can (also the config's check). */
export function urlPrefixProblem(prefix: string, allowHttp: boolean): string | undefined {
  let u: URL;
  try {
    u = new URL(prefix);
  } catch {
    return `${prefix} is not a URL`;
  }
  if (u.protocol !== 'https:' && u.protocol !== 'http:')
    return `${redactUrl(prefix)}: only https:// (or http:// with updates.allowHttp) prefixes`;
  if (u.protocol === 'http:' && !allowHttp)
    return `${redactUrl(prefix)} is http: set updates.allowHttp (--update-allow-http) to allow it`;
  if (u.username || u.password || u.search || u.hash)
    return `${redactUrl(prefix)}: a prefix has no user info, query or fragment`;
  return undefined;
}

/** `url` is under `prefix`: same scheme, host and port, and the path at or below the prefix's, by whole segments. */
function isUnder(url: URL, prefix: URL): boolean {
  if (url.protocol !== prefix.protocol || url.host !== prefix.host) return false;
  const p = prefix.pathname;
  if (p.endsWith('/')) return url.pathname.startsWith(p);
  return url.pathname === p || url.pathname.startsWith(`${p}/`);
}

export class UrlPolicy {
  private readonly prefixes: URL[];
  private readonly allowHttp: boolean;

  constructor(o: UrlPolicyOptions = {}) {
    this.allowHttp = o.allowHttp ?? false;
    this.prefixes = (o.allowUrls ?? []).map((p) => {
      const problem = urlPrefixProblem(p, this.allowHttp);
      if (problem) throw new SetokimError(ErrorCodes.BAD_CONFIG, `updates.allowUrls: ${problem}`);
      return new URL(p);
    });
  }

  /**
   * The URL a job (or a redirect) may fetch, parsed; URL_NOT_ALLOWED when it may not. The
   * message is for the device's log (the URL redacted); what goes on the wire is generic.
   */
  check(url: string, source: JobSource, what = 'the job URL'): URL {
    let u: URL;
    try {
      u = new URL(url);
    } catch {
      throw new SetokimError(ErrorCodes.BAD_ARGUMENT, `${what} is not a URL; use https://host/path`);
    }
    const refuse = (why: string) => new SetokimError(ErrorCodes.URL_NOT_ALLOWED, `${what} ${redactUrl(url)} ${why}`);
    if (u.protocol === 'file:') {
      if (source === 'local') return u;
      throw refuse('is file: which a job from MQTT may not name (a local install reads files: setokim bundle install)');
    }
    if (u.protocol !== 'https:' && u.protocol !== 'http:') throw refuse('is not https: (or http:)');
    if (u.username || u.password) throw refuse('carries user info; use a signed query string instead');
    if (source === 'local') return u;
    if (u.protocol === 'http:' && !this.allowHttp) throw refuse('is http: and updates.allowHttp is off');
    if (/%2f|%5c/i.test(u.pathname)) throw refuse('has an encoded / or \\ in its path');
    if (!this.prefixes.some((p) => isUnder(u, p))) {
      const list = this.prefixes.length
        ? `the prefixes of updates.allowUrls (${this.prefixes.map((p) => p.href).join(', ')})`
        : 'updates.allowUrls, which is empty';
      throw refuse(`is not under ${list}; add its prefix with --update-allow-url`);
    }
    return u;
  }
}
