/**
 * Exact-length reads from a stream (a socket, or the TLS socket layered on it), with
 * backpressure: the stream is paused while more than HIGH_WATER bytes wait unread, so a
 * peer that sends faster than requests are served cannot grow memory.
 *
 * A plain socket is better read in Node's onread mode (ByteReader.adopt): libuv then reads a
 * WRITE payload straight into the buffer readInto fills, where 'data' events would bring it in
 * 64 KiB chunks, each allocated, collected and copied once more.
 */
import { Socket } from 'node:net';
import { Duplex } from 'node:stream';
import { ImageError } from '../block/errors';
import { nativeSys } from '../io/native';
import { setReadBuffer, socketFd } from '../io/node-socket';

const HIGH_WATER = 4 << 20;
/** What one socket read asks for when no payload is waiting (Node's own size). */
const READ_SIZE = 64 * 1024;

interface Waiter {
  n: number;
  into?: Buffer;
  resolve: (b: Buffer) => void;
  reject: (e: Error) => void;
}

export class ByteReader {
  private chunks: Buffer[] = [];
  private buffered = 0;
  private waiter: Waiter | null = null;
  /** Onread mode: the readInto under way, filled in place by the socket's reads. */
  private target: { into: Buffer; filled: number } | null = null;
  /** Onread mode: the buffer the socket reads into next. */
  private current: Uint8Array | null = null;
  /** Onread mode: where reads go while no payload waits (requests, small payloads). */
  private scratch: Buffer | null = null;
  private ended: Error | null = null;
  private readonly onData = (chunk: Buffer) => this.push(chunk);
  private readonly onEnd = () => this.fail(new ImageError('IO', 'the peer closed the connection'));
  private readonly onError = (err: Error) => this.fail(new ImageError('IO', `connection error: ${err.message}`, { cause: err }));
  private _stream!: Duplex;

  /** A reader of `stream`'s 'data' events; without a stream, attach() gives it one. */
  constructor(stream?: Duplex) {
    if (stream) this.attach(stream, false);
  }

  get stream(): Duplex {
    return this._stream;
  }

  private attach(stream: Duplex, onread: boolean): void {
    this._stream = stream;
    if (!onread) stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
  }

  /**
   * A reader of an accepted plain socket in onread mode: its descriptor moves to a new Socket
   * (the one to use from now on, `reader.stream`) and the original is dropped. Falls back to
   * 'data' events where the socket has no descriptor.
   */
  static adopt(socket: Socket): ByteReader {
    const fd = socketFd(socket);
    if (fd === undefined) return new ByteReader(socket);
    const reader = new ByteReader();
    // Node asks for the next buffer right after each read (and once now), and passes it back.
    const onread = { buffer: () => reader.nextBuffer(), callback: (n: number) => reader.received(n) };
    const opts = { fd: nativeSys().dup(fd), allowHalfOpen: socket.allowHalfOpen, readable: true, writable: true, onread };
    reader.attach(new Socket(opts as ConstructorParameters<typeof Socket>[0]), true);
    socket.destroy();
    return reader;
  }

  /** Bytes received and not yet read. */
  get pending(): number {
    return this.buffered;
  }

  /** Resolves with exactly `n` bytes; rejects when the stream ends first. */
  read(n: number): Promise<Buffer> {
    return this.wait(n);
  }

  /** Fills `into` exactly (always a copy: the caller may reuse the buffer afterwards). */
  async readInto(into: Buffer): Promise<void> {
    await this.wait(into.byteLength, into);
  }

  private wait(n: number, into?: Buffer): Promise<Buffer> {
    if (this.waiter) return Promise.reject(new Error('ByteReader: concurrent reads'));
    if (this.buffered >= n) return Promise.resolve(this.take(n, into));
    if (this.ended) return Promise.reject(this.ended);
    if (into && n >= READ_SIZE && this.current) {
      // What is buffered goes first; the socket's reads fill the rest in place. Node picked
      // the next read's buffer before this request was known: it is swapped here.
      const filled = this.buffered;
      this.take(filled, into);
      this.target = { into, filled };
      setReadBuffer(this.stream, this.nextBuffer());
    }
    this.stream.resume();
    return new Promise((resolve, reject) => (this.waiter = { n, into, resolve, reject }));
  }

  /** Onread mode: where the socket's next read goes: the payload being filled, else the scratch buffer. */
  private nextBuffer(): Uint8Array {
    this.current = this.target ? this.target.into.subarray(this.target.filled) : (this.scratch ??= Buffer.allocUnsafe(READ_SIZE));
    return this.current;
  }

  /** Onread mode: `n` bytes arrived in the current buffer (scratch bytes are copied out: it is read into again). */
  private received(n: number): boolean {
    const t = this.target;
    if (!t) {
      this.push(Buffer.copyBytesFrom(this.current!, 0, n));
      return true;
    }
    t.filled += n;
    if (t.filled === t.into.byteLength) {
      this.target = null;
      const w = this.waiter!;
      this.waiter = null;
      w.resolve(t.into);
    }
    return true;
  }

  /** Reads and drops `n` bytes, a bounded piece at a time. */
  async skip(n: number): Promise<void> {
    for (let left = n; left > 0; ) {
      const step = Math.min(left, HIGH_WATER);
      await this.read(step);
      left -= step;
    }
  }

  /** Stops listening to the stream (before it is wrapped in TLS); returns bytes already buffered. */
  detach(): number {
    this.stream.off('data', this.onData);
    this.stream.off('end', this.onEnd);
    this.stream.off('close', this.onEnd);
    this.stream.off('error', this.onError);
    this.stream.pause();
    return this.buffered;
  }

  private push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.buffered += chunk.byteLength;
    const w = this.waiter;
    if (w && this.buffered >= w.n) {
      this.waiter = null;
      w.resolve(this.take(w.n, w.into));
    }
    if (this.buffered > HIGH_WATER && !this.waiter) this.stream.pause();
  }

  private fail(err: Error): void {
    if (this.ended) return;
    this.ended = err;
    const w = this.waiter;
    this.waiter = null;
    this.target = null;
    w?.reject(err);
  }

  private take(n: number, into?: Buffer): Buffer {
    this.buffered -= n;
    const first = this.chunks[0];
    if (!into && first && first.byteLength >= n) {
      if (first.byteLength === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = into ?? Buffer.allocUnsafe(n);
    let at = 0;
    while (at < n) {
      const c = this.chunks[0];
      const k = Math.min(c.byteLength, n - at);
      c.copy(out, at, 0, k);
      at += k;
      if (k === c.byteLength) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }
}
