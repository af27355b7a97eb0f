/**
 * What img needs of a Node socket that Node does not expose, reached through its libuv handle
 * (`_handle`, as in Node 20 and 22). The one place for it, so a Node upgrade that changes the
 * handle breaks here.
 */
import { Duplex } from 'node:stream';

interface Handle {
  fd?: number;
  useUserBuffer?(b: Uint8Array): void;
}

const handle = (stream: Duplex): Handle | undefined => (stream as unknown as { _handle?: Handle })._handle;

/** The socket's descriptor, or undefined when it has none (a TLS stream, a stream not over a socket). */
export function socketFd(stream: Duplex): number | undefined {
  const fd = handle(stream)?.fd;
  return fd !== undefined && fd >= 0 ? fd : undefined;
}

/** A socket in onread mode: its next read goes into `buf` instead of the buffer Node chose after the last one. */
export function setReadBuffer(socket: Duplex, buf: Uint8Array): void {
  handle(socket)!.useUserBuffer!(buf);
}
