/**
 * NBD URIs as qemu and libnbd write them (NetworkBlockDevice/nbd doc/uri.md):
 * nbd://host[:port]/[export] over TCP and nbd+unix:///[export]?socket=PATH over a unix socket;
 * nbds:// and nbds+unix:// require TLS, with libnbd's query parameters tls-certificates=DIR,
 * tls-psk-file=FILE, tls-username=NAME (or the URI's user part) and tls-hostname=NAME.
 */
import * as os from 'node:os';
import { ImageError } from '../block/errors';
import { DEFAULT_PORT } from './protocol';

/** What an nbds URI asks of TLS. Without certificates or a PSK file the system's CAs verify the server. */
export interface NbdTls {
  certificates?: string;
  pskFile?: string;
  /** The PSK identity: tls-username, else the URI's user, else the local user name (as libnbd). */
  username: string;
  /** The name the server's certificate must carry: tls-hostname, else the URI's host; none for a unix socket. */
  hostname?: string;
}

export type NbdAddress = ({ socket: string } | { host: string; port: number }) & { name: string; tls?: NbdTls };

const URI_SCHEME = /^nbds?(\+unix|\+tcp)?:\/\//i;

export function isNbdUri(text: string): boolean {
  return URI_SCHEME.test(text);
}

function tlsOf(url: URL, host: string | undefined): NbdTls | undefined {
  if (!url.protocol.startsWith('nbds')) return undefined;
  const q = url.searchParams;
  return {
    certificates: q.get('tls-certificates') ?? undefined,
    pskFile: q.get('tls-psk-file') ?? undefined,
    username: q.get('tls-username') ?? (url.username ? decodeURIComponent(url.username) : os.userInfo().username),
    hostname: q.get('tls-hostname') ?? host,
  };
}

export function parseNbdUri(uri: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new ImageError('INVALID_ARGUMENT', `malformed NBD URI '${uri}'`);
  }
  const name = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol.endsWith('+unix:')) {
    const socket = url.searchParams.get('socket');
    if (!socket) throw new ImageError('INVALID_ARGUMENT', `NBD URI '${uri}' names no socket (?socket=PATH)`);
    return { socket, name, tls: tlsOf(url, undefined) };
  }
  const port = url.port ? Number(url.port) : DEFAULT_PORT;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost';
  return { host, port, name, tls: tlsOf(url, host) };
}
