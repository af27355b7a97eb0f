/**
 * Exact-length reads from a stream (a socket, or the TLS socket layered on it), with
 * backpressure: the stream is paused while more than HIGH_WATER bytes wait unread, so a
 * peer that sends faster than requests are served cannot grow memory.
 */
import { Duplex } from 'node:stream';
import { ImageError } from '../block/errors';

const HIGH_WATER = 4 << 20;

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
  private ended: Error | null = null;
  private readonly onData = (chunk: Buffer) => this.push(chunk);
  private readonly onEnd = () => this.fail(new ImageError('IO', 'the peer closed the connection'));
  private readonly onError = (err: Error) => this.fail(new ImageError('IO', `connection error: ${err.message}`, { cause: err }));

  constructor(private readonly stream: Duplex) {
    stream.on('data', this.onData);
    stream.on('end', this.onEnd);
    stream.on('close', this.onEnd);
    stream.on('error', this.onError);
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
    this.stream.resume();
    return new Promise((resolve, reject) => (this.waiter = { n, into, resolve, reject }));
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
