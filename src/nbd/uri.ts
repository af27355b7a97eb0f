/**
 * NBD URIs as qemu and libnbd write them (NetworkBlockDevice/nbd doc/uri.md):
 * nbd://host[:port]/[export] over TCP and nbd+unix:///[export]?socket=PATH over a unix socket.
 */
import { ImageError } from '../block/errors';
import { DEFAULT_PORT } from './protocol';

export type NbdAddress = { socket: string; name: string } | { host: string; port: number; name: string };

const URI_SCHEME = /^nbd(\+unix|\+tcp)?:\/\//i;

export function isNbdUri(text: string): boolean {
  return URI_SCHEME.test(text);
}

export function parseNbdUri(uri: string): NbdAddress {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    throw new ImageError('INVALID_ARGUMENT', `malformed NBD URI '${uri}'`);
  }
  const name = decodeURIComponent(url.pathname.replace(/^\//, ''));
  if (url.protocol === 'nbd+unix:') {
    const socket = url.searchParams.get('socket');
    if (!socket) throw new ImageError('INVALID_ARGUMENT', `NBD URI '${uri}' names no socket (?socket=PATH)`);
    return { socket, name };
  }
  const port = url.port ? Number(url.port) : DEFAULT_PORT;
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1') || 'localhost';
  return { host, port, name };
}
